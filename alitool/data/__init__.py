"""Datasets as compact in-memory arrays, and the registry that maps a config's ``data.name`` to a loader.

Images are kept as uint8 [N, C, H, W] (SVHN's extra split is 531k images: 1.6 GB as uint8, 6.5 GB as
float32) and become float32 in [0, 1] one batch at a time. Vector data (the 2-D toy experiment) is float32
[N, D] and is used as it is.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch

from alitool.config import Config
from alitool.errors import UserError


@dataclass
class ArrayDataset:
    """One split of a dataset. ``x``: uint8 [N, C, H, W] images or float32 [N, D] vectors."""

    name: str
    split: str
    x: np.ndarray
    y: np.ndarray | None = None  # int64 class labels, where the dataset has them
    attrs: np.ndarray | None = None  # e.g. CelebA's 40 binary attributes as 0/1 uint8
    attr_names: tuple[str, ...] = ()
    class_names: tuple[str, ...] = ()  # what label k means; conditional ALI's one-hot y (alitool/conditional.py)

    def __len__(self) -> int:
        return len(self.x)

    def float_batch(self, index: np.ndarray | slice) -> torch.Tensor:
        """Rows ``index`` as float32 (images scaled to [0, 1])."""
        batch = torch.from_numpy(np.ascontiguousarray(self.x[index]))
        if batch.dtype == torch.uint8:
            return batch.float().div_(255.0)
        return batch.float()

    def mean_image(self, limit: int = 10000) -> torch.Tensor:
        """Mean of the first ``limit`` rows in [0, 1]: the decoder's output-bias initialisation."""
        return self.float_batch(slice(0, min(limit, len(self)))).mean(dim=0)


Loader = Callable[[Config, str, str], ArrayDataset]
_LOADERS: dict[str, Loader] = {}


def register(name: str) -> Callable[[Loader], Loader]:
    """Decorator: ``@register("svhn")`` makes ``data.name: svhn`` load through the decorated function."""

    def wrap(fn: Loader) -> Loader:
        _LOADERS[name] = fn
        return fn

    return wrap


def load_dataset(cfg: Config, split: str = "train", data_dir: str = "") -> ArrayDataset:
    """Load ``split`` of the dataset ``cfg.data.name`` from ``data_dir`` (or the dataset's default place)."""
    _import_loaders()
    name = cfg.data.name
    if name not in _LOADERS:
        raise UserError(f"unknown dataset {name!r}; available: {', '.join(sorted(_LOADERS))}")
    ds = _LOADERS[name](cfg, split, data_dir or cfg.data.data_dir)
    if ds.x.dtype == np.uint8 and ds.x.shape[1:] != (cfg.data.channels, cfg.data.image_size, cfg.data.image_size):
        raise UserError(
            f"dataset {name!r} gives images of shape {ds.x.shape[1:]}, the config expects "
            f"({cfg.data.channels}, {cfg.data.image_size}, {cfg.data.image_size})"
        )
    return ds


def iterate_batches(n: int, batch_size: int, seed: int, epoch: int, start: int = 0) -> Iterator[np.ndarray]:
    """Shuffled index batches for one epoch, reproducible from (seed, epoch), dropping the last partial batch
    (batch norm wants full batches). ``start`` skips the batches a resumed run has already done."""
    order = np.random.default_rng([seed, epoch]).permutation(n)
    for b in range(start, n // batch_size):
        yield order[b * batch_size : (b + 1) * batch_size]


def _import_loaders() -> None:
    # Loader modules register themselves on import; importing here keeps `import alitool.data` light.
    from alitool.data import digits, mixture  # noqa: F401
    # The official-format datasets; a loop so that one-line imports added above stay sorted.
    for module in ("celeba", "cifar10", "folder", "mnist", "svhn", "tinyimagenet"):
        __import__(f"alitool.data.{module}")
