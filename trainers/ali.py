"""The ALI game (Dumoulin et al. 2017, section 3, Algorithm 1; official code's update).

One forward graph serves both players: x -> z_hat = G_z(x) and z -> x_tilde = G_x(z), then D sees
(x, z_hat) and (x_tilde, z) in one batch, as the official code does. Two backward passes follow over that one
graph, each restricted to its own player's parameters (``backward(inputs=...)``): the discriminator gets the
gradient of its loss only, the encoder and decoder the gradient of theirs only. Both Adam steps are then taken
together. So the D update never moves G_x or G_z, the G update never moves D, and the forward pass is paid once.
Restricting ``backward`` (rather than calling ``autograd.grad``) keeps DistributedDataParallel's gradient
all-reduce hooks working, so the same step runs in one process or many.

``train.update: alternating`` is the switch for the classic alternative (D steps first, then G_x and G_z play
against the updated D); with ``model.disc_unary`` every score term of D gets the loss (BigBiGAN). The 2-D
experiment measures both (docs/mixture.md); the paper configs keep the official code's simultaneous update.

Conditional ALI (section 4.4, Eq. 7; ``model.conditional``): every batch comes with its y, which G_z, G_x and D
all see; the q pairs are (x, z_hat, y) and the p pairs (x_tilde, z, y) with the same y, as in the official code.
The switches beyond the paper (docs/switches.md) plug in here, each off by default: ``train.loss: hinge``
(trainers/losses.py), ``train.alice`` (the cycle term joins the encoder and decoder loss), ``train.ema`` (an
average of G_z and G_x, trainers/ema.py, used by ``sample`` and ``reconstruct``) and ``model.spectral_norm``
(alitool/models.py).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from alitool.config import Config
from alitool.errors import UserError
from alitool.models import ALI, reparametrize
from alitool.trainers.ema import WeightAverage
from alitool.trainers.losses import alice_cycle_loss, loss_pair
from alitool.trainers.speed import adam, autocast, compile_modules, prepare_input, prepare_module
from alitool.trainers.switches import check_switches


def _round_metrics(loss_d: Tensor, loss_g: Tensor, real: tuple[Tensor, ...], fake: tuple[Tensor, ...]):
    """What the loop logs; d_real / d_fake are D's probabilities from its total score (the sum of its terms)."""
    real_logit, fake_logit = sum(real), sum(fake)
    return {"loss_d": loss_d.detach(), "loss_g": loss_g.detach(),
            "d_real": torch.sigmoid(real_logit).mean().detach(), "d_fake": torch.sigmoid(fake_logit).mean().detach()}


class ALIGame:
    """Owns the networks and optimizers of one ALI run; ``step`` plays one round of the game."""

    name = "ali"

    def __init__(self, cfg: Config, device: torch.device):
        check_switches(cfg)
        self.cfg = cfg
        self.device = device
        self.conditional = cfg.model.conditional
        self.d_loss, self.g_loss = loss_pair(cfg.train.loss)
        self.model = prepare_module(ALI(cfg).to(device), cfg.train.channels_last)
        self.d_params = list(self.model.discriminator.parameters())
        self.g_params = self.model.generator_parameters()
        t = cfg.train
        self.opt_d, self.opt_g = adam(self.d_params, cfg), adam(self.g_params, cfg)
        # What `step` calls: the plain networks, or their DDP / compiled wrappers.
        m = self.model
        self.encoder, self.decoder, self.discriminator = m.encoder, m.decoder, m.discriminator
        if t.compile:
            self.encoder, self.decoder, self.discriminator = compile_modules(
                self.encoder, self.decoder, self.discriminator)
        # The average reads the unwrapped networks, so DDP and torch.compile wrappers do not matter to it.
        self.ema = WeightAverage({"encoder": m.encoder, "decoder": m.decoder}, t.ema) if t.ema else None

    def distribute(self) -> None:
        """Wrap the three networks in DistributedDataParallel (the process group must exist)."""
        from torch.nn.parallel import DistributedDataParallel as DDP

        ids = [self.device.index] if self.device.type == "cuda" else None
        self.encoder, self.decoder, self.discriminator = (
            DDP(m, device_ids=ids) for m in (self.model.encoder, self.model.decoder, self.model.discriminator))
        if self.cfg.train.compile:
            self.encoder, self.decoder, self.discriminator = compile_modules(
                self.encoder, self.decoder, self.discriminator)

    # -- what the loop checkpoints ------------------------------------------------------------------------
    def modules(self) -> dict[str, nn.Module]:
        nets = {"encoder": self.model.encoder, "decoder": self.model.decoder,
                "discriminator": self.model.discriminator}
        return {**nets, **self.ema.modules()} if self.ema else nets

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"discriminator": self.opt_d, "generator": self.opt_g}

    def init_from_data(self, mean_image: Tensor) -> None:
        self.model.decoder.init_output_bias(mean_image.to(self.device))
        if self.ema:
            self.ema.reset()  # the average starts from the initialised networks, output bias included

    # -- one round ------------------------------------------------------------------------------------
    def step(self, x: Tensor, y: Tensor | None = None) -> dict[str, Tensor]:
        x = prepare_input(x, self.cfg.train.channels_last)
        n = x.shape[0]
        y = self._condition(y)
        with autocast(self.cfg, self.device):
            z = torch.randn(n, self.cfg.model.latent_dim, device=x.device)  # p(z) = N(0, I)
            z_hat = reparametrize(*self.encoder(x, y))  # z_hat ~ q(z | x)
            x_tilde = self.decoder(z, y)  # x_tilde ~ p(x | z)
        if self.cfg.train.update == "alternating":  # or "simultaneous": the config admits nothing else
            return self._alternating_step(x, y, z, z_hat, x_tilde)
        real, fake = self._scores(x, y, z, z_hat, x_tilde)
        loss_d = sum(self.d_loss(r, f) for r, f in zip(real, fake, strict=True))
        loss_g = sum(self.g_loss(r, f) for r, f in zip(real, fake, strict=True))
        loss_g, extra = self._add_alice(loss_g, x, y, z, z_hat, x_tilde)

        self.opt_d.zero_grad(set_to_none=True)
        self.opt_g.zero_grad(set_to_none=True)
        loss_d.backward(inputs=self.d_params, retain_graph=True)
        loss_g.backward(inputs=self.g_params)
        self.opt_d.step()
        self.opt_g.step()
        if self.ema:
            self.ema.update()
        return {**_round_metrics(loss_d, loss_g, real, fake), **extra}

    def _condition(self, y: Tensor | None) -> Tensor | None:
        """A conditional game's y as float32 on the device; one line when y is missing or unexpected."""
        if not self.conditional:
            if y is not None:
                raise UserError("this ALI game is not conditional (model.conditional is false) but got y")
            return None
        if y is None:
            raise UserError("the conditional ALI game needs y with every batch (model.conditional)")
        return torch.as_tensor(y, dtype=torch.float32).to(self.device)

    def _add_alice(self, loss_g: Tensor, x: Tensor, y: Tensor | None, z: Tensor, z_hat: Tensor,
                   x_tilde: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """loss_g + lambda * ALICE's cycle term (trainers/losses.py) when train.alice > 0, at the cost of two more
        passes: G_x(z_hat) for x -> z_hat -> x, and G_z(x_tilde) for z -> x_tilde -> z."""
        weight = self.cfg.train.alice
        if not weight:
            return loss_g, {}
        with autocast(self.cfg, self.device):
            x_cycle = self.decoder(z_hat, y)
            z_cycle = reparametrize(*self.encoder(x_tilde, y))
        cycle = alice_cycle_loss(x, x_cycle, z, z_cycle, self.cfg.train.alice_norm)
        return loss_g + weight * cycle, {"alice": cycle.detach()}

    def _scores(self, x: Tensor, y: Tensor | None, z: Tensor, z_hat: Tensor,
                x_tilde: Tensor) -> tuple[tuple[Tensor, ...], ...]:
        """D's score terms on the q pairs (x, z_hat) and on the p pairs (x_tilde, z), one batch through D:
        (s_xz,) each, or (s_xz, s_x, s_z) with BigBiGAN's unary scores (each term gets the loss)."""
        n = x.shape[0]
        both_y = None if y is None else torch.cat([y, y])
        with autocast(self.cfg, self.device):
            terms = self.discriminator(torch.cat([x, x_tilde.to(x.dtype)]), torch.cat([z_hat, z.to(z_hat.dtype)]),
                                       y=both_y, terms=True)
        terms = [t.float() for t in terms]
        return tuple(t[:n] for t in terms), tuple(t[n:] for t in terms)

    def _alternating_step(self, x: Tensor, y: Tensor | None, z: Tensor, z_hat: Tensor,
                          x_tilde: Tensor) -> dict[str, Tensor]:
        """D steps on detached pairs first; G_x and G_z then step against the updated D (a second D pass)."""
        real, fake = self._scores(x, y, z, z_hat.detach(), x_tilde.detach())
        loss_d = sum(self.d_loss(r, f) for r, f in zip(real, fake, strict=True))
        self.opt_d.zero_grad(set_to_none=True)
        loss_d.backward(inputs=self.d_params)
        self.opt_d.step()
        real, fake = self._scores(x, y, z, z_hat, x_tilde)
        loss_g = sum(self.g_loss(r, f) for r, f in zip(real, fake, strict=True))
        loss_g, extra = self._add_alice(loss_g, x, y, z, z_hat, x_tilde)
        self.opt_g.zero_grad(set_to_none=True)
        loss_g.backward(inputs=self.g_params)
        self.opt_g.step()
        if self.ema:
            self.ema.update()
        return {**_round_metrics(loss_d, loss_g, real, fake), **extra}

    # -- what the loop shows --------------------------------------------------------------------------
    def shown_networks(self) -> tuple[nn.Module, nn.Module]:
        """(encoder, decoder) that pictures come from: the weight average with train.ema, else the raw ones."""
        if self.ema:
            return self.ema.copies["encoder"], self.ema.copies["decoder"]
        return self.model.encoder, self.model.decoder

    @torch.no_grad()
    def sample(self, z: Tensor, y: Tensor | None = None) -> Tensor:
        return self.shown_networks()[1](z.to(self.device), self._condition(y)).float()

    @torch.no_grad()
    def reconstruct(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        """G_x(mu(x)): the posterior mean is the reconstruction a user wants to look at."""
        encoder, decoder = self.shown_networks()
        x = prepare_input(x.to(self.device), self.cfg.train.channels_last)
        y = self._condition(y)
        mu, _ = encoder(x, y)
        return decoder(mu, y).float()

    def train(self, mode: bool = True) -> None:
        self.model.train(mode)
