"""scikit-learn's bundled handwritten digits: 1,797 8x8 grayscale images, values 0..16, shipped with the
package (no download). The default dataset: real data that trains on 2 CPU cores in minutes."""

from __future__ import annotations

import numpy as np

from alitool.config import Config
from alitool.data import ArrayDataset, register
from alitool.errors import UserError

DIGIT_CLASSES = tuple(str(d) for d in range(10))
TEST_FRACTION = 0.2  # a fixed, stratified 80/20 split (seed 0) so that test images are never trained on


@register("digits")
def load_digits(cfg: Config, split: str, data_dir: str) -> ArrayDataset:
    from sklearn.datasets import load_digits as sklearn_digits

    bunch = sklearn_digits()
    images = np.round(bunch.images * (255.0 / 16.0)).astype(np.uint8)[:, None]  # [N, 1, 8, 8]
    labels = bunch.target.astype(np.int64)
    rng = np.random.default_rng(0)
    test = np.zeros(len(labels), dtype=bool)
    for digit in range(10):
        members = np.flatnonzero(labels == digit)
        test[rng.choice(members, int(round(len(members) * TEST_FRACTION)), replace=False)] = True
    if split == "train":
        keep = ~test
    elif split in ("test", "val"):
        keep = test
    elif split == "all":
        keep = np.ones_like(test)
    else:
        raise UserError(f"digits has splits train, test, all; not {split!r}")
    return ArrayDataset("digits", split, images[keep], labels[keep], class_names=DIGIT_CLASSES)
