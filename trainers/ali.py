"""The ALI game (Dumoulin et al. 2017, section 3, Algorithm 1; official code's update).

One forward graph serves both players: x -> z_hat = G_z(x) and z -> x_tilde = G_x(z), then D sees
(x, z_hat) and (x_tilde, z) in one batch, as the official code does. The discriminator gradient and the
encoder/decoder gradient are two separate ``autograd.grad`` calls over that graph, each restricted to its own
player's parameters, and both Adam steps are then taken together. So the D update never moves G_x or G_z
and the G update never moves D, and the forward pass is paid once.
"""

from __future__ import annotations

import torch
from alitool.trainers.losses import discriminator_loss, generator_loss
from torch import Tensor, nn

from alitool.config import Config
from alitool.models import ALI


def set_gradients(params: list[nn.Parameter], grads: tuple[Tensor | None, ...]) -> None:
    for p, g in zip(params, grads, strict=False):
        p.grad = g


class ALIGame:
    """Owns the networks and optimizers of one ALI run; ``step`` plays one round of the game."""

    name = "ali"

    def __init__(self, cfg: Config, device: torch.device):
        self.cfg = cfg
        self.device = device
        self.model = ALI(cfg).to(device)
        self.d_params = list(self.model.discriminator.parameters())
        self.g_params = self.model.generator_parameters()
        t = cfg.train
        self.opt_d = torch.optim.Adam(self.d_params, lr=t.lr, betas=(t.beta1, t.beta2))
        self.opt_g = torch.optim.Adam(self.g_params, lr=t.lr, betas=(t.beta1, t.beta2))

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
        enc, dec, disc = self.model.encoder, self.model.decoder, self.model.discriminator
        n = x.shape[0]
        z = torch.randn(n, self.cfg.model.latent_dim, device=x.device)  # p(z) = N(0, I)
        z_hat = enc.sample(x)  # z_hat ~ q(z | x)
        x_tilde = dec(z)  # x_tilde ~ p(x | z)
        logits = disc(torch.cat([x, x_tilde]), torch.cat([z_hat, z]))
        real, fake = logits[:n], logits[n:]
        loss_d = discriminator_loss(real, fake)
        loss_g = generator_loss(real, fake)

        grads_d = torch.autograd.grad(loss_d, self.d_params, retain_graph=True)
        grads_g = torch.autograd.grad(loss_g, self.g_params)
        set_gradients(self.d_params, grads_d)
        set_gradients(self.g_params, grads_g)
        self.opt_d.step()
        self.opt_g.step()
        return {"loss_d": loss_d.detach(), "loss_g": loss_g.detach(),
                "d_real": torch.sigmoid(real).mean().detach(), "d_fake": torch.sigmoid(fake).mean().detach()}

    # -- what the loop shows --------------------------------------------------------------------------
    @torch.no_grad()
    def sample(self, z: Tensor) -> Tensor:
        return self.model.decoder(z.to(self.device))

    @torch.no_grad()
    def reconstruct(self, x: Tensor) -> Tensor:
        """G_x(mu(x)): the posterior mean is the reconstruction a user wants to look at."""
        mu, _ = self.model.encoder(x.to(self.device))
        return self.model.decoder(mu)

    def train(self, mode: bool = True) -> None:
        self.model.train(mode)
