"""Semi-supervised ALI with a K+1 discriminator (Dumoulin et al. 2017, section 4.3, tables 1-2).

The paper trains D(x, z) as a (K+1)-way classifier in the manner of Salimans et al. 2016 (section 5,
"Semi-supervised learning"), without feature matching. The authors never released this part; this module is our
reading of it. With D's logits l_1 .. l_K, l_{K+1} and softmax probabilities p(k | x, z):

- labelled pairs (x, z_hat ~ q(z | x)) with class y: L_supervised = -log p(y | x, z, y <= K)
  = logsumexp(l_1..l_K) - l_y (Salimans' L_supervised: cross-entropy over the K real classes);
- unlabelled pairs (x, z_hat): -log(1 - p(K+1 | x, z)), i.e. maximise P(class in 1..K);
- generated pairs (x_tilde ~ p(x | z), z ~ p(z)): -log p(K+1 | x, z).

Writing s(x, z) = logsumexp(l_1..l_K) - l_{K+1}, one has p(K+1) = sigmoid(-s), so the two unsupervised terms are
exactly ALI's binary game with logit s: softplus(-s_q) + softplus(s_p) (trainers/losses.py). (Salimans' full
-log p(y | x) on labelled data equals L_supervised plus the unlabelled term on those pairs; like their code, we
apply the real/fake term to the unlabelled batch.) The encoder and decoder play the matching non-saturating swap,
softplus(s_q) + softplus(-s_p), on the unlabelled and generated pairs (paper Eq. 4), plus ALICE's cycle term on
the unlabelled pairs when ``train.alice`` is on; the supervised term trains D only. D's class prediction for a
test image is argmax_k<=K l_k(x, mu(x)) (``class_logits``).

The game holds the labelled subset itself: ``attach_data`` picks ``labels`` training examples, balanced over the
K classes and drawn with train.seed, and each step draws a labelled batch from them with torch's generator (so a
resumed run, which restores that generator, continues the same sequence). The chosen indices are saved in the
checkpoint's ``extra["labelled_indices"]``.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from alitool.config import Config
from alitool.data import ArrayDataset
from alitool.errors import UserError
from alitool.models import reparametrize
from alitool.trainers.ali import ALIGame
from alitool.trainers.speed import autocast, prepare_input
from alitool.trainers.switches import refuse_switches


def kplus1_config(cfg: Config) -> Config:
    """``cfg`` with D(x, z)'s last row widened to K+1 logits (K = train.semi_supervised.classes)."""
    k = cfg.train.semi_supervised.classes
    if k < 2:
        raise UserError(f"train.semi_supervised.classes is {k}; the K+1 game needs at least 2 classes")
    table = cfg.model.disc_xz
    if not table:
        raise UserError("the K+1 game needs a D(x, z) table (model.disc_xz) whose last row gives the logits")
    last = table[-1]
    if last.channels == k + 1:
        return cfg
    if last.channels != 1 or last.activation not in ("linear", "sigmoid"):
        raise UserError(f"model.disc_xz's last row outputs {last.channels} channels ({last.activation}); the K+1 "
                        f"game expects the one-logit row of an ALI config (or {k + 1} linear channels)")
    widened = replace(last, channels=k + 1, activation="linear")
    return replace(cfg, model=replace(cfg.model, disc_xz=table[:-1] + (widened,)))


def balanced_labelled_subset(labels: np.ndarray, n_labels: int, classes: int, seed: int) -> np.ndarray:
    """Sorted indices of ``n_labels`` examples, ``n_labels / classes`` of each class 0..classes-1, drawn without
    replacement from a generator seeded by ``seed``."""
    if n_labels % classes:
        raise UserError(f"{n_labels} labels do not split evenly over {classes} classes; use a multiple of {classes}")
    per_class = n_labels // classes
    rng = np.random.default_rng([seed, 4242])
    chosen = []
    for c in range(classes):
        members = np.flatnonzero(labels == c)
        if len(members) < per_class:
            raise UserError(f"class {c} has {len(members)} training examples; {per_class} labelled ones are needed")
        chosen.append(rng.choice(members, per_class, replace=False))
    return np.sort(np.concatenate(chosen))


def real_logit(logits: Tensor) -> Tensor:
    """s = logsumexp(l_1..l_K) - l_{K+1}: the log-odds that (x, z) is a pair of the data (classes 1..K)."""
    return torch.logsumexp(logits[:, :-1], dim=1) - logits[:, -1]


def supervised_loss(logits: Tensor, y: Tensor) -> Tensor:
    """-log p(y | x, z, y <= K): cross-entropy over the K real classes (Salimans et al. 2016, L_supervised)."""
    return F.cross_entropy(logits[:, :-1], y)


def kplus1_discriminator_loss(labelled: Tensor, y: Tensor, unlabelled: Tensor, fake: Tensor) -> tuple[Tensor, Tensor]:
    """(total, supervised part): L_supervised + mean -log(1 - p(K+1 | x, z_hat)) + mean -log p(K+1 | x_tilde, z)."""
    sup = supervised_loss(labelled, y)
    unsup = F.softplus(-real_logit(unlabelled)).mean() + F.softplus(real_logit(fake)).mean()
    return sup + unsup, sup


def kplus1_generator_loss(unlabelled: Tensor, fake: Tensor) -> Tensor:
    """The non-saturating swap for G_z and G_x: mean -log p(K+1 | x, z_hat) + mean -log(1 - p(K+1 | x_tilde, z))."""
    return F.softplus(real_logit(unlabelled)).mean() + F.softplus(-real_logit(fake)).mean()


@torch.no_grad()
def class_logits(encoder: nn.Module, discriminator: nn.Module, x: Tensor, z: str = "mean") -> Tensor:
    """D's K class logits l_1..l_K for images ``x``, paired with the posterior mean mu(x) (``z="mean"``) or a
    sample z_hat ~ q(z | x) (``z="sample"``). Networks should be in eval mode (no dropout)."""
    mu, log_sigma = encoder(x)
    code = mu if z == "mean" else reparametrize(mu, log_sigma)
    return discriminator(x, code)[:, :-1]


class SemiSupervisedGame(ALIGame):
    """ALI with a K+1 discriminator and a balanced labelled subset of the training set."""

    name = "ali-kplus1"

    def __init__(self, cfg: Config, device: torch.device):
        if cfg.train.semi_supervised.labels <= 0:
            raise UserError("the K+1 game needs train.semi_supervised.labels > 0")
        # Spectral norm is part of D; ALICE's cycle term only adds to the encoder/decoder loss (on the unlabelled
        # pairs), so it carries over unchanged. The loss and EMA switches are not implemented for the K+1 game.
        refuse_switches(cfg, self.name, allowed=("model.spectral_norm", "train.alice"))
        # The K+1 step below is the simultaneous one-graph update on D(x, z)'s logits alone (section 4.3 as written).
        if cfg.train.update != "simultaneous" or cfg.model.disc_unary:
            raise UserError("the K+1 game supports train.update=simultaneous without model.disc_unary; got "
                            f"train.update={cfg.train.update}, model.disc_unary={cfg.model.disc_unary}")
        super().__init__(kplus1_config(cfg), device)  # self.cfg: the widened config the checkpoint records
        self.classes = cfg.train.semi_supervised.classes
        self.labelled_batch = cfg.train.semi_supervised.labelled_batch_size or cfg.train.batch_size
        self.labelled_indices: np.ndarray | None = None
        self.x_labelled: Tensor | None = None
        self.y_labelled: Tensor | None = None

    def attach_data(self, train: ArrayDataset) -> None:
        """Pick the labelled subset of ``train`` (the only labels the game ever sees) and keep it on the device."""
        semi = self.cfg.train.semi_supervised
        if train.y is None:
            raise UserError(f"the {train.name} {train.split} split has no labels; the K+1 game needs a labelled "
                            "dataset")
        if train.y.min() < 0 or train.y.max() >= self.classes:
            raise UserError(f"{train.name} labels run {train.y.min()}..{train.y.max()}; train.semi_supervised."
                            f"classes is {self.classes}")
        idx = balanced_labelled_subset(train.y, semi.labels, self.classes, self.cfg.train.seed)
        self.labelled_indices = idx
        self.x_labelled = train.float_batch(idx).to(self.device)
        self.y_labelled = torch.from_numpy(train.y[idx]).long().to(self.device)

    def extra_state(self) -> dict:
        if self.labelled_indices is None:
            return {}
        return {"labelled_indices": torch.from_numpy(self.labelled_indices.astype(np.int64))}

    def step(self, x: Tensor) -> dict[str, Tensor]:
        if self.x_labelled is None:
            raise RuntimeError("SemiSupervisedGame.step before attach_data: the labelled subset is not chosen")
        x = prepare_input(x, self.cfg.train.channels_last)
        n = x.shape[0]
        pick = torch.randperm(len(self.x_labelled))[: self.labelled_batch].to(self.device)
        x_lab = prepare_input(self.x_labelled[pick], self.cfg.train.channels_last)
        y_lab = self.y_labelled[pick]
        m = len(pick)
        with autocast(self.cfg, self.device):
            x_q = torch.cat([x_lab, x])
            z = torch.randn(n, self.cfg.model.latent_dim, device=x.device)  # p(z) = N(0, I)
            z_hat = reparametrize(*self.encoder(x_q))  # z_hat ~ q(z | x), labelled and unlabelled alike
            x_tilde = self.decoder(z)
            logits = self.discriminator(torch.cat([x_q, x_tilde.to(x.dtype)]), torch.cat([z_hat, z.to(z_hat.dtype)]))
        logits = logits.float()
        labelled, unlabelled, fake = logits[:m], logits[m : m + n], logits[m + n :]
        loss_d, loss_sup = kplus1_discriminator_loss(labelled, y_lab, unlabelled, fake)
        loss_g = kplus1_generator_loss(unlabelled, fake)
        loss_g, extra = self._add_alice(loss_g, x, None, z, z_hat[m:], x_tilde)

        self.opt_d.zero_grad(set_to_none=True)
        self.opt_g.zero_grad(set_to_none=True)
        loss_d.backward(inputs=self.d_params, retain_graph=True)
        loss_g.backward(inputs=self.g_params)
        self.opt_d.step()
        self.opt_g.step()
        accuracy = (labelled[:, :-1].argmax(dim=1) == y_lab).float().mean()
        return {"loss_d": loss_d.detach(), "loss_g": loss_g.detach(), "loss_sup": loss_sup.detach(),
                "acc_labelled": accuracy.detach(),
                "d_real": torch.sigmoid(real_logit(unlabelled)).mean().detach(),
                "d_fake": torch.sigmoid(real_logit(fake)).mean().detach(), **extra}
