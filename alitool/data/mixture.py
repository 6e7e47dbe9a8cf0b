"""The 2-D toy data of the paper's section 4.5 (Dumoulin et al. 2017, figure 8): a mixture of 25 Gaussians.

Means on the grid {-4, -2, 0, 2, 4}^2, isotropic std 0.05, equal weights; 100,000 training samples. The
samples are generated, never downloaded: each split comes from its own fixed seed, so the held-out split
never repeats a training point and every machine sees the same numbers. ``y`` is the mode each point was
drawn from (0..24, row-major over the grid), which the experiment uses to colour points by mode.
"""

from __future__ import annotations

import numpy as np

from alitool.config import Config
from alitool.data import ArrayDataset, register
from alitool.errors import UserError

GRID = (-4.0, -2.0, 0.0, 2.0, 4.0)
STD = 0.05
SPLIT_SIZES = {"train": 100_000, "val": 10_000, "test": 10_000}
SPLIT_SEEDS = {"train": 1, "val": 2, "test": 3}  # distinct seeds: the splits share no point


def mixture_means() -> np.ndarray:
    """The 25 mode centres, float64 [25, 2], row-major over the grid (mode k = (GRID[k // 5], GRID[k % 5]))."""
    return np.array([(a, b) for a in GRID for b in GRID], dtype=np.float64)


def sample_mixture(n: int, seed: int, std: float = STD) -> tuple[np.ndarray, np.ndarray]:
    """``n`` points (float32 [n, 2]) and the mode each was drawn from (int64 [n])."""
    rng = np.random.default_rng(seed)
    means = mixture_means()
    modes = rng.integers(0, len(means), size=n)
    points = means[modes] + std * rng.standard_normal((n, 2))
    return points.astype(np.float32), modes.astype(np.int64)


@register("mixture25")
def load_mixture25(cfg: Config, split: str, data_dir: str) -> ArrayDataset:
    if split not in SPLIT_SIZES:
        raise UserError(f"mixture25 has splits {', '.join(SPLIT_SIZES)}; not {split!r}")
    if cfg.data.image_size != 0 or cfg.data.channels != 2:
        raise UserError(
            f"mixture25 is 2-D vector data: set data.image_size: 0 and data.channels: 2 "
            f"(the config has image_size {cfg.data.image_size}, channels {cfg.data.channels})"
        )
    x, y = sample_mixture(SPLIT_SIZES[split], SPLIT_SEEDS[split])
    return ArrayDataset("mixture25", split, x, y)
