"""The baselines of the paper's 2-D experiment (Dumoulin et al. 2017, section 4.5, figure 8), as games for the
shared training loop (``alitool.trainers.loop.Trainer(game_factory=...)``).

- ``GANGame``: the decoder G_x(z) against a discriminator on x alone, built from the same D(x) and D(x, z)
  tables as ALI's discriminator minus its z input (the paper: "decoder and discriminator architectures are
  identical between ALI and GAN except for the input of the discriminator").
- ``InverseMappingGame``: a trained GAN's decoder, frozen; the encoder (ALI's architecture) learns to map
  G_x(z) back to z by least squares ("learned inverse mapping", paper section 5).
- ``PostHocGame``: a trained GAN's decoder, frozen; the encoder and a fresh joint discriminator play the ALI
  game ("post-hoc learned inference", paper section 5).
- ``VAEGame``: ALI's encoder (with a Gaussian output) and decoder trained on the evidence lower bound, with a
  Gaussian likelihood whose per-dimension scale is learned (the maximum-likelihood choice; no tuning knob).

Every game reports ``loss_d`` and ``loss_g`` (the loop logs both); games without a discriminator report
``loss_d`` 0. Checkpoints carry the modules by name, ``encoder`` and ``decoder`` where the game has them, so
``TorchBackend`` and ``alitool export`` read them like an ALI run.
"""

from __future__ import annotations

import math
from dataclasses import replace

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from alitool.config import Config
from alitool.models import ALI, Decoder, Encoder, LayerStack, data_shape, init_weights, reparametrize
from alitool.trainers.ali import ALIGame
from alitool.trainers.losses import discriminator_loss
from alitool.trainers.speed import adam
from alitool.trainers.switches import refuse_switches


def _frozen(module: nn.Module) -> nn.Module:
    for p in module.parameters():
        p.requires_grad_(False)
    return module.eval()


def _zero(device: torch.device) -> Tensor:
    return torch.zeros((), device=device)


class MarginalDiscriminator(nn.Module):
    """The GAN's D(x): ALI's D(x) table, then its D(x, z) table fed with D(x)'s features only -> one logit."""

    def __init__(self, cfg: Config):
        super().__init__()
        m = cfg.model
        self.x_stack = LayerStack(m.disc_x, math.prod(data_shape(cfg)), m)
        self.head = LayerStack(m.disc_xz, self.x_stack.out_width, m, last_bias=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.x_stack(x.flatten(1)).flatten(1)).flatten(1).squeeze(1)


class GANGame:
    """Goodfellow et al.'s GAN with the non-saturating generator loss, updated like ALI (``train.update``)."""

    name = "gan"

    def __init__(self, cfg: Config, device: torch.device):
        refuse_switches(cfg, self.name)  # the paper's baseline as the paper has it (docs/switches.md)
        self.cfg = cfg
        self.device = device
        self.decoder = Decoder(cfg).to(device)
        self.discriminator = MarginalDiscriminator(cfg).to(device)
        init_weights(self.decoder, cfg.model.init_std)
        init_weights(self.discriminator, cfg.model.init_std)
        self.opt_d = adam(list(self.discriminator.parameters()), cfg)
        self.opt_g = adam(list(self.decoder.parameters()), cfg)

    def modules(self) -> dict[str, nn.Module]:
        return {"decoder": self.decoder, "discriminator": self.discriminator}

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"discriminator": self.opt_d, "generator": self.opt_g}

    def init_from_data(self, mean_image: Tensor) -> None:
        self.decoder.init_output_bias(mean_image.to(self.device))

    def step(self, x: Tensor) -> dict[str, Tensor]:
        z = torch.randn(x.shape[0], self.cfg.model.latent_dim, device=x.device)
        x_tilde = self.decoder(z)
        if self.cfg.train.update == "alternating":  # or "simultaneous": the config admits nothing else
            real, fake = self.discriminator(x), self.discriminator(x_tilde.detach())
            loss_d = discriminator_loss(real, fake)
            self.opt_d.zero_grad(set_to_none=True)
            loss_d.backward()
            self.opt_d.step()
            fake = self.discriminator(x_tilde)
            loss_g = F.softplus(-fake).mean()
            self.opt_g.zero_grad(set_to_none=True)
            loss_g.backward(inputs=list(self.decoder.parameters()))
            self.opt_g.step()
        else:  # one forward graph, both players step together (ALI's official update)
            logits = self.discriminator(torch.cat([x, x_tilde]))
            real, fake = logits.chunk(2)
            loss_d = discriminator_loss(real, fake)
            loss_g = F.softplus(-fake).mean()
            self.opt_d.zero_grad(set_to_none=True)
            self.opt_g.zero_grad(set_to_none=True)
            loss_d.backward(inputs=list(self.discriminator.parameters()), retain_graph=True)
            loss_g.backward(inputs=list(self.decoder.parameters()))
            self.opt_d.step()
            self.opt_g.step()
        return {"loss_d": loss_d.detach(), "loss_g": loss_g.detach(),
                "d_real": torch.sigmoid(real).mean().detach(), "d_fake": torch.sigmoid(fake).mean().detach()}

    @torch.no_grad()
    def sample(self, z: Tensor) -> Tensor:
        return self.decoder(z.to(self.device))

    @torch.no_grad()
    def reconstruct(self, x: Tensor) -> Tensor:
        """A GAN has no encoder: NaN, so that no reconstruction error is ever reported for it."""
        return torch.full_like(x, float("nan"), device=self.device)

    def train(self, mode: bool = True) -> None:
        self.decoder.train(mode)
        self.discriminator.train(mode)


class _FrozenDecoderMixin:
    """A trained GAN's decoder, loaded and frozen (the two post-hoc inference baselines)."""

    decoder: nn.Module

    def _load_decoder(self, decoder_state: dict[str, Tensor]) -> None:
        self.decoder.load_state_dict(decoder_state)
        _frozen(self.decoder)

    def init_from_data(self, mean_image: Tensor) -> None:
        """Nothing to initialise from data: the decoder comes trained."""


class InverseMappingGame(_FrozenDecoderMixin):
    """Learned inverse mapping: minimise ||G_z(G_x(z)) - z||^2 over the encoder, the GAN decoder frozen.

    The data batch is not used: the encoder only ever sees the GAN's samples, which is the point of the
    baseline (it cannot learn about modes the GAN dropped).
    """

    name = "gan-inverse"

    def __init__(self, cfg: Config, device: torch.device, decoder_state: dict[str, Tensor]):
        refuse_switches(cfg, self.name)
        self.cfg = cfg
        self.device = device
        self.encoder = Encoder(cfg).to(device)
        self.decoder = Decoder(cfg).to(device)
        init_weights(self.encoder, cfg.model.init_std)
        self._load_decoder(decoder_state)
        self.opt_g = adam(list(self.encoder.parameters()), cfg)

    def modules(self) -> dict[str, nn.Module]:
        return {"encoder": self.encoder, "decoder": self.decoder}

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"encoder": self.opt_g}

    def step(self, x: Tensor) -> dict[str, Tensor]:
        z = torch.randn(x.shape[0], self.cfg.model.latent_dim, device=x.device)
        with torch.no_grad():
            x_tilde = self.decoder(z)
        loss = (reparametrize(*self.encoder(x_tilde)) - z).pow(2).sum(1).mean()
        self.opt_g.zero_grad(set_to_none=True)
        loss.backward()
        self.opt_g.step()
        return {"loss_d": _zero(x.device), "loss_g": loss.detach()}

    @torch.no_grad()
    def sample(self, z: Tensor) -> Tensor:
        return self.decoder(z.to(self.device))

    @torch.no_grad()
    def reconstruct(self, x: Tensor) -> Tensor:
        return self.decoder(self.encoder(x.to(self.device))[0])

    def train(self, mode: bool = True) -> None:
        self.encoder.train(mode)  # the decoder stays in eval mode: it is frozen


class PostHocGame(_FrozenDecoderMixin, ALIGame):
    """Post-hoc learned inference: the ALI game with the GAN's decoder frozen; only the encoder and a fresh
    discriminator learn."""

    name = "gan-posthoc"

    def __init__(self, cfg: Config, device: torch.device, decoder_state: dict[str, Tensor]):
        refuse_switches(cfg, self.name)
        super().__init__(cfg, device)
        self.decoder = self.model.decoder
        self._load_decoder(decoder_state)
        self.g_params = list(self.model.encoder.parameters())
        self.opt_g = adam(self.g_params, cfg)

    def train(self, mode: bool = True) -> None:
        self.model.train(mode)
        self.model.decoder.eval()


def vae_config(cfg: Config) -> Config:
    """ALI's encoder and decoder for a VAE: the encoder's last row outputs (mu, log_sigma) and takes no noise
    input (the VAE's q(z | x) must have a density)."""
    m = cfg.model
    last = m.encoder[-1]
    encoder = (*m.encoder[:-1], replace(last, channels=2 * m.latent_dim))
    return replace(cfg, model=replace(m, encoder=encoder, encoder_output="gaussian", encoder_noise_dim=0))


class GaussianLikelihood(nn.Module):
    """p(x | z) = N(G_x(z), diag(sigma^2)) with one learned log sigma per data dimension."""

    def __init__(self, shape: tuple[int, ...]):
        super().__init__()
        self.log_sigma = nn.Parameter(torch.zeros(shape))

    def nll(self, x: Tensor, mean: Tensor) -> Tensor:
        """-log p(x | z) summed over data dimensions, per example."""
        z = (x - mean) * torch.exp(-self.log_sigma)
        per_dim = 0.5 * z.pow(2) + self.log_sigma + 0.5 * math.log(2 * math.pi)
        return per_dim.flatten(1).sum(1)


class VAEGame:
    """Kingma & Welling's VAE with ALI's encoder/decoder: minimise E_q[-log p(x | z)] + KL(q(z | x) || N(0, I))."""

    name = "vae"

    def __init__(self, cfg: Config, device: torch.device):
        refuse_switches(cfg, self.name)
        self.cfg = vae_config(cfg)  # the loop checkpoints this config: it describes the networks
        self.device = device
        net = ALI(self.cfg)  # builds and initialises the encoder and decoder exactly as ALI's
        self.encoder, self.decoder = net.encoder.to(device), net.decoder.to(device)
        self.likelihood = GaussianLikelihood(data_shape(self.cfg)).to(device)
        params = [*self.encoder.parameters(), *self.decoder.parameters(), *self.likelihood.parameters()]
        self.opt_g = adam(params, self.cfg)

    def modules(self) -> dict[str, nn.Module]:
        return {"encoder": self.encoder, "decoder": self.decoder, "likelihood": self.likelihood}

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"generator": self.opt_g}

    def init_from_data(self, mean_image: Tensor) -> None:
        self.decoder.init_output_bias(mean_image.to(self.device))

    def step(self, x: Tensor) -> dict[str, Tensor]:
        mu, log_sigma = self.encoder(x)
        z = reparametrize(mu, log_sigma)
        nll = self.likelihood.nll(x, self.decoder(z))
        kl = 0.5 * (mu.pow(2) + torch.exp(2 * log_sigma) - 1 - 2 * log_sigma).sum(1)
        loss = (nll + kl).mean()
        self.opt_g.zero_grad(set_to_none=True)
        loss.backward()
        self.opt_g.step()
        return {"loss_d": _zero(x.device), "loss_g": loss.detach(), "kl": kl.mean().detach()}

    @torch.no_grad()
    def sample(self, z: Tensor) -> Tensor:
        return self.decoder(z.to(self.device))

    @torch.no_grad()
    def reconstruct(self, x: Tensor) -> Tensor:
        return self.decoder(self.encoder(x.to(self.device))[0])

    def train(self, mode: bool = True) -> None:
        self.encoder.train(mode)
        self.decoder.train(mode)
