"""An exponential moving average of the encoder G_z and decoder G_x weights (``train.ema``; beyond the paper).

Averaging a generator's weights over the last steps of training gives better samples than its last iterate
(Yazici et al. 2019, "The unusual effectiveness of averaging in GAN training"; BigGAN and BigBiGAN sample from
such an average). After each training step, for every parameter w and its average e:

    e <- d * e + (1 - d) * w        (d = train.ema, e.g. 0.999)

and the batch-norm buffers (running mean, variance, count) are copied from the raw network: their running
averages are already averages. The copies live next to the raw networks, are saved in the checkpoint as
``encoder_ema`` and ``decoder_ema`` (so a resumed run continues them exactly), and are what sampling, the epoch
figures, ``alitool export`` and the RUN commands use when present; ``alitool export --raw-weights`` exports the
raw weights instead. Updates read the unwrapped modules, so they are the same in one process or under DDP (whose
replicas hold identical weights).
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from alitool.errors import UserError

SUFFIX = "_ema"  # checkpoint module names: "encoder" -> "encoder_ema"


def check_decay(decay: float) -> float:
    if not 0.0 <= decay < 1.0:
        raise UserError(f"train.ema {decay}: the decay must be in [0, 1) (0 turns the average off; e.g. 0.999)")
    return decay


class WeightAverage:
    """EMA copies of ``modules`` (name -> network), updated in place by ``update()``."""

    def __init__(self, modules: dict[str, nn.Module], decay: float):
        self.decay = check_decay(decay)
        self.sources = modules
        self.copies = {name: _frozen_copy(module) for name, module in modules.items()}

    def modules(self) -> dict[str, nn.Module]:
        """The averages by checkpoint name (``encoder_ema``, ``decoder_ema``)."""
        return {name + SUFFIX: copy_ for name, copy_ in self.copies.items()}

    @torch.no_grad()
    def reset(self) -> None:
        """Start the averages at the current raw weights (after the data-dependent initialisation)."""
        for name, source in self.sources.items():
            self.copies[name].load_state_dict(source.state_dict())

    @torch.no_grad()
    def update(self) -> None:
        """e <- d * e + (1 - d) * w for every parameter; buffers copied."""
        d = self.decay
        for name, source in self.sources.items():
            average = self.copies[name]
            averaged = list(average.parameters())
            raw = [p.detach() for p in source.parameters()]
            torch._foreach_mul_(averaged, d)
            torch._foreach_add_(averaged, torch._foreach_mul(raw, 1.0 - d))
            for kept, current in zip(average.buffers(), source.buffers(), strict=True):
                kept.copy_(current)


def _frozen_copy(module: nn.Module) -> nn.Module:
    clone = copy.deepcopy(module).eval()  # always in eval mode: it is only ever used to sample and reconstruct
    for p in clone.parameters():
        p.requires_grad_(False)
    return clone
