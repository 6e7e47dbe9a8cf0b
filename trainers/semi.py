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

The game holds the labelled subset itself: ``attach_data`` picks ``labels`` examples of the labelled split
(``train.semi_supervised.labelled_split``), balanced over the K classes and drawn with train.seed, and each step
draws a labelled batch from them with torch's generator (so a resumed run, which restores that generator, continues
the same sequence); the unlabelled pairs come from the training split. The labelled split defaults to the dataset's
choice: for SVHN the 73,257-image ``train_32x32.mat`` (alitool's ``val`` split), where the baselines the paper
compares with (Salimans et al. 2016) take their 1000 labels, while ALI trains on ``extra``; for every other dataset
the training split itself. The chosen indices and the split they index are saved in the checkpoint's
``extra["labelled_indices"]`` and ``extra["labelled_split"]``; a resumed run takes them from there.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
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


def balanced_labelled_subset(labels: np.ndarray, n_labels: int, classes: int, seed: int,
                             where: str = "the training split") -> np.ndarray:
    """Sorted indices of ``n_labels`` examples, ``n_labels / classes`` of each class 0..classes-1, drawn without
    replacement from a generator seeded by ``seed``. ``where`` names the split in the error messages."""
    if n_labels % classes:
        raise UserError(f"{n_labels} labels do not split evenly over {classes} classes; use a multiple of {classes}")
    per_class = n_labels // classes
    rng = np.random.default_rng([seed, 4242])
    chosen = []
    for c in range(classes):
        members = np.flatnonzero(labels == c)
        if len(members) < per_class:
            raise UserError(f"class {c} has {len(members)} examples in {where}; {per_class} labelled ones are "
                            f"needed ({n_labels} labels over {classes} classes)")
        chosen.append(rng.choice(members, per_class, replace=False))
    return np.sort(np.concatenate(chosen))


# The split the labelled examples come from when train.semi_supervised.labelled_split is empty: SVHN's 73k
# train_32x32.mat (alitool's val), the labelled pool of the feature-matching GAN the paper compares with (Salimans
# et al. 2016) and of the L2-SVM protocol, while ALI trains on extra (alitool/data/svhn.py). Elsewhere: the
# training split.
DEFAULT_LABELLED_SPLIT = {"svhn": "val"}
# Split names that are one set of images under another name: the labelled split is compared, stored and checked
# by the name of what it holds. SVHN's aliases name its files (alitool/data/svhn.py); digits serves its test images
# as val too (alitool/data/digits.py).
SPLIT_ALIASES = {"svhn": {"extra": "train", "official-train": "val"}, "digits": {"val": "test"}}
# Splits that hold the test images among others: labels drawn from them would be scored on by eval classify.
HOLDS_TEST = {"digits": ("all",)}


def canonical_split(dataset: str, split: str) -> str:
    """The name of the images ``split`` of ``dataset`` holds (SVHN's ``extra`` is ``train``, digits' ``val`` is
    ``test``)."""
    return SPLIT_ALIASES.get(dataset, {}).get(split, split)


def labelled_split(cfg: Config) -> str:
    """The split the K+1 game's labelled examples come from (section 4.3): train.semi_supervised.labelled_split, or
    the dataset's choice where it is empty, by canonical name. The test split, which ``alitool eval classify``
    scores, is refused: its labels must never be trained on."""
    dataset = cfg.data.name
    asked = cfg.train.semi_supervised.labelled_split
    split = canonical_split(dataset, asked or DEFAULT_LABELLED_SPLIT.get(dataset, "train"))
    if split == "test" or split in HOLDS_TEST.get(dataset, ()):
        raise UserError(f"train.semi_supervised.labelled_split={asked}: that split holds the {dataset} test images, "
                        "which alitool eval classify scores; draw the labels from train or val")
    return split


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
    """ALI with a K+1 discriminator and a balanced labelled subset of the labelled split (``labelled_split``)."""

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
        self.labelled_split: str | None = None  # canonical name of the split labelled_indices index
        self._train: ArrayDataset | None = None  # attach_data's training split and loader of the other splits
        self._load_split: Callable[[str], ArrayDataset] | None = None
        self._training_split = "train"
        self.x_labelled: Tensor | None = None
        self.y_labelled: Tensor | None = None

    def attach_data(self, train: ArrayDataset, load_split: Callable[[str], ArrayDataset] | None = None) -> None:
        """Pick the labelled subset (the only labels the game ever sees) from the labelled split and keep it on the
        device. ``train`` is the training split; ``load_split(name)`` loads another split of the same dataset."""
        self._train, self._load_split = train, load_split
        self._training_split = canonical_split(train.name, train.split)
        split = labelled_split(self.cfg)
        source = self._labelled_source(split)
        semi = self.cfg.train.semi_supervised
        where = f"the {source.name} {split} split"
        self._use(split, source, balanced_labelled_subset(source.y, semi.labels, self.classes, self.cfg.train.seed,
                                                          where))

    def _labelled_source(self, split: str) -> ArrayDataset:
        """The split ``split`` (a canonical name), checked to carry labels in 0..K-1."""
        if split == self._training_split:
            source = self._train
        elif self._load_split is None:
            raise UserError(f"train.semi_supervised.labelled_split: the labels come from the {split} split, which "
                            "this caller did not provide")
        else:
            try:
                source = self._load_split(split)
            except UserError as err:  # an unknown split name, or its files missing: say which key asked for it
                raise UserError(f"train.semi_supervised.labelled_split={split}: {err}") from None
        if source.y is None:
            raise UserError(f"the {source.name} {split} split has no labels; the K+1 game needs a labelled split "
                            "(train.semi_supervised.labelled_split)")
        if len(source.y) and (source.y.min() < 0 or source.y.max() >= self.classes):
            raise UserError(f"{source.name} {split} labels run {source.y.min()}..{source.y.max()}; "
                            f"train.semi_supervised.classes is {self.classes}")
        return source

    def _use(self, split: str, source: ArrayDataset, idx: np.ndarray) -> None:
        self.labelled_split, self.labelled_indices = split, idx
        self.x_labelled = source.float_batch(idx).to(self.device)
        self.y_labelled = torch.from_numpy(source.y[idx]).long().to(self.device)

    def without_labelled(self, data: ArrayDataset) -> ArrayDataset:
        """``data`` less the labelled examples, where it is the split they came from and that is not the training
        split (SVHN's val, the trainer's monitoring images): the figures and recon_mse never show a labelled
        image."""
        if self.labelled_indices is None or self.labelled_split == self._training_split or \
                canonical_split(data.name, data.split) != self.labelled_split:
            return data
        keep = np.setdiff1d(np.arange(len(data)), self.labelled_indices)
        rows = {k: getattr(data, k)[keep] for k in ("x", "y", "attrs") if getattr(data, k) is not None}
        return dataclasses.replace(data, **rows)

    def extra_state(self) -> dict:
        if self.labelled_indices is None:
            return {}
        return {"labelled_indices": torch.from_numpy(self.labelled_indices.astype(np.int64)),
                "labelled_split": self.labelled_split}

    def restore_extra_state(self, extra: dict) -> None:
        """On resume: the labelled subset the checkpoint recorded, from the split it names. A checkpoint without
        ``labelled_split`` comes from before that key, when the labels always came from the training split. A
        labelled split named in the config that differs from the run's is refused: the run keeps its labels."""
        saved = extra.get("labelled_indices")
        if saved is None:
            return
        split = str(extra.get("labelled_split", self._training_split))
        asked = self.cfg.train.semi_supervised.labelled_split
        if asked and labelled_split(self.cfg) != split:
            raise UserError(f"a resumed run keeps its labelled examples: they come from the {split} split, not "
                            f"train.semi_supervised.labelled_split={asked}")
        idx = saved.cpu().numpy().astype(np.int64) if isinstance(saved, Tensor) else np.asarray(saved, np.int64)
        if split == self.labelled_split and np.array_equal(idx, self.labelled_indices):
            return
        source = self._labelled_source(split)
        if len(idx) and (idx.min() < 0 or idx.max() >= len(source)):
            raise UserError(f"the checkpoint's labelled indices run to {idx.max()}, but the {source.name} {split} "
                            f"split has {len(source)} examples: were its files replaced?")
        self._use(split, source, idx)

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
