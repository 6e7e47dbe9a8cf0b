"""The ALI game (Dumoulin et al. 2017, section 3, Algorithm 1; official code's update).

One forward graph serves both players: x -> z_hat = G_z(x) and z -> x_tilde = G_x(z), then D sees
(x, z_hat) and (x_tilde, z) in one batch, as the official code does. Two backward passes follow over that one
graph, each restricted to its own player's parameters (``backward(inputs=...)``): the discriminator gets the
gradient of its loss only, the encoder and decoder the gradient of theirs only. Both Adam steps are then taken
together. So the D update never moves G_x or G_z, the G update never moves D, and the forward pass is paid once.
Restricting ``backward`` (rather than calling ``autograd.grad``) keeps DistributedDataParallel's gradient
all-reduce hooks working, so the same step runs in one process or many.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from alitool.config import Config
from alitool.models import ALI, reparametrize
from alitool.trainers.losses import discriminator_loss, generator_loss
from alitool.trainers.speed import autocast, prepare_input, prepare_module


class ALIGame:
    """Owns the networks and optimizers of one ALI run; ``step`` plays one round of the game."""

    name = "ali"

    def __init__(self, cfg: Config, device: torch.device):
        self.cfg = cfg
        self.device = device
        self.model = prepare_module(ALI(cfg).to(device), cfg.train.channels_last)
        self.d_params = list(self.model.discriminator.parameters())
        self.g_params = self.model.generator_parameters()
        t = cfg.train
        self.opt_d = torch.optim.Adam(self.d_params, lr=t.lr, betas=(t.beta1, t.beta2))
        self.opt_g = torch.optim.Adam(self.g_params, lr=t.lr, betas=(t.beta1, t.beta2))
        # What `step` calls: the plain networks, or their DDP / compiled wrappers.
        m = self.model
        self.encoder, self.decoder, self.discriminator = m.encoder, m.decoder, m.discriminator
        if t.compile:
            self.encoder, self.decoder, self.discriminator = (
                torch.compile(m) for m in (self.encoder, self.decoder, self.discriminator))

    def distribute(self) -> None:
        """Wrap the three networks in DistributedDataParallel (the process group must exist)."""
        from torch.nn.parallel import DistributedDataParallel as DDP

        ids = [self.device.index] if self.device.type == "cuda" else None
        self.encoder, self.decoder, self.discriminator = (
            DDP(m, device_ids=ids) for m in (self.model.encoder, self.model.decoder, self.model.discriminator))
        if self.cfg.train.compile:
            self.encoder, self.decoder, self.discriminator = (
                torch.compile(m) for m in (self.encoder, self.decoder, self.discriminator))

    # -- what the loop checkpoints ------------------------------------------------------------------------
    def modules(self) -> dict[str, nn.Module]:
        return {"encoder": self.model.encoder, "decoder": self.model.decoder,
                "discriminator": self.model.discriminator}

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"discriminator": self.opt_d, "generator": self.opt_g}

    def init_from_data(self, mean_image: Tensor) -> None:
        self.model.decoder.init_output_bias(mean_image.to(self.device))

    # -- one round ------------------------------------------------------------------------------------
    def step(self, x: Tensor) -> dict[str, Tensor]:
        x = prepare_input(x, self.cfg.train.channels_last)
        n = x.shape[0]
        with autocast(self.cfg.train.precision, self.device):
            z = torch.randn(n, self.cfg.model.latent_dim, device=x.device)  # p(z) = N(0, I)
            z_hat = reparametrize(*self.encoder(x))  # z_hat ~ q(z | x)
            x_tilde = self.decoder(z)  # x_tilde ~ p(x | z)
            logits = self.discriminator(torch.cat([x, x_tilde.to(x.dtype)]), torch.cat([z_hat, z.to(z_hat.dtype)]))
        logits = logits.float()
        real, fake = logits[:n], logits[n:]
        loss_d = discriminator_loss(real, fake)
        loss_g = generator_loss(real, fake)

        self.opt_d.zero_grad(set_to_none=True)
        self.opt_g.zero_grad(set_to_none=True)
        loss_d.backward(inputs=self.d_params, retain_graph=True)
        loss_g.backward(inputs=self.g_params)
        self.opt_d.step()
        self.opt_g.step()
        return {"loss_d": loss_d.detach(), "loss_g": loss_g.detach(),
                "d_real": torch.sigmoid(real).mean().detach(), "d_fake": torch.sigmoid(fake).mean().detach()}

    # -- what the loop shows --------------------------------------------------------------------------
    @torch.no_grad()
    def sample(self, z: Tensor) -> Tensor:
        return self.model.decoder(z.to(self.device)).float()

    @torch.no_grad()
    def reconstruct(self, x: Tensor) -> Tensor:
        """G_x(mu(x)): the posterior mean is the reconstruction a user wants to look at."""
        x = prepare_input(x.to(self.device), self.cfg.train.channels_last)
        mu, _ = self.model.encoder(x)
        return self.model.decoder(mu).float()

    def train(self, mode: bool = True) -> None:
        self.model.train(mode)
