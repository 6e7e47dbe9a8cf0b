"""The switches beyond the paper (docs/switches.md): which are on, their values checked, and one line from the
games that do not implement them.

- ``model.conditional``: conditional ALI (paper section 4.4; alitool/conditional.py)
- ``model.spectral_norm``: spectral normalisation of D (Miyato et al. 2018)
- ``train.loss: hinge``: the hinge loss (BigBiGAN, Donahue & Simonyan 2019)
- ``train.alice``: ALICE's cycle term (Li et al. 2017)
- ``train.ema``: an average of the encoder and decoder weights (Yazici et al. 2019)
"""

from __future__ import annotations

from alitool.config import Config
from alitool.errors import UserError
from alitool.trainers.ema import check_decay


def active_switches(cfg: Config) -> list[str]:
    """The switches that are on, as ``key`` or ``key=value``."""
    m, t = cfg.model, cfg.train
    on = []
    if m.conditional:
        on.append("model.conditional")
    if m.spectral_norm:
        on.append("model.spectral_norm")
    if t.loss != "bce":
        on.append(f"train.loss={t.loss}")
    if t.alice:
        on.append(f"train.alice={t.alice:g}")
    if t.ema:
        on.append(f"train.ema={t.ema:g}")
    return on


def check_switches(cfg: Config) -> None:
    """One line for a switch value that makes no sense (the enumerated ones, train.loss and train.alice_norm, are
    checked when the config loads)."""
    t = cfg.train
    check_decay(t.ema)
    if t.alice < 0:
        raise UserError(f"train.alice {t.alice}: the ALICE weight must be >= 0 (0 turns it off)")


def refuse_switches(cfg: Config, game: str, allowed: tuple[str, ...] = ()) -> None:
    """A game that does not implement a switch refuses it rather than silently training without it."""
    unsupported = [s for s in active_switches(cfg) if s.split("=")[0] not in allowed]
    if unsupported:
        raise UserError(f"the {game} game does not implement {', '.join(unsupported)} (switches of the ALI game); "
                        "turn them off for this run")
