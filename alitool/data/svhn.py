"""SVHN (Netzer et al. 2011), cropped digits, in its official MATLAB format (paper section 4.1, Appendix A table 4).

Files: ``train_32x32.mat`` (73,257 images), ``test_32x32.mat`` (26,032), ``extra_32x32.mat`` (531,131), each a
MATLAB v5 file holding ``X``: uint8 [32, 32, 3, N] and ``y``: [N, 1] with labels 1..10, where 10 is the digit 0.

Splits follow the official ALI code (``ali/streams.py``: ``SVHN(2, ('extra',))`` for training, ``('train',)``
for monitoring), which is what the paper's SVHN results were trained on:

- ``train``: ``extra_32x32.mat`` (531,131 images): what the model trains on;
- ``val``:   ``train_32x32.mat`` (73,257 images): the monitoring set, and the labelled pool of the L2-SVM and
  semi-supervised experiments (section 4.3);
- ``test``:  ``test_32x32.mat``;
- ``extra`` is an alias of ``train``; ``official-train`` of ``val`` (for code that wants the official names).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from alitool.config import Config
from alitool.data import ArrayDataset, register
from alitool.data.download import Remote, default_data_dir, fetch_files
from alitool.errors import UserError

SOURCE = "http://ufldl.stanford.edu/housenumbers/"
REMOTES = {  # official MD5s, as published alongside torchvision's SVHN
    "extra": Remote("extra_32x32.mat", SOURCE + "extra_32x32.mat", md5="a93ce644f1a588dc4d68dda5feec44a7"),
    "train": Remote("train_32x32.mat", SOURCE + "train_32x32.mat", md5="e26dedcc434d2e4c54c9b2d4a06d8373"),
    "test": Remote("test_32x32.mat", SOURCE + "test_32x32.mat", md5="eb5a983be6a315427106f1b164d9cef3"),
}
SPLIT_FILES = {"train": "extra", "extra": "extra", "val": "train", "official-train": "train", "test": "test"}
CONVERT_CHUNK = 32768  # images converted HWCN -> NCHW at a time (bounds the transient memory)


def read_svhn_mat(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 [N, 3, 32, 32], labels int64 [N] in 0..9) from one official .mat file."""
    import scipy.io

    try:
        mat = scipy.io.loadmat(str(path), variable_names=("X", "y"))
    except NotImplementedError:  # scipy's answer to a MATLAB v7.3 (HDF5) file
        raise UserError(f"{path}: a MATLAB v7.3 file; SVHN's official files are MATLAB v5 (save with -v7 or "
                        f"download the official file again)") from None
    except (OSError, ValueError, TypeError, EOFError, MemoryError) as err:
        reason = " ".join(str(err).split()) or type(err).__name__
        raise UserError(f"{path}: not a readable MATLAB v5 file (truncated or corrupt?): {reason}") from None
    if "X" not in mat or "y" not in mat:
        raise UserError(f"{path}: expected the variables X and y of an SVHN file, found {sorted(mat)}")
    x, y = mat.pop("X"), np.asarray(mat.pop("y")).reshape(-1)
    if x.ndim != 4 or x.shape[:3] != (32, 32, 3) or x.dtype != np.uint8:
        raise UserError(f"{path}: X should be uint8 [32, 32, 3, N], got {x.dtype} {list(x.shape)}")
    if len(y) != x.shape[3]:
        raise UserError(f"{path}: {x.shape[3]} images but {len(y)} labels")
    if len(y) and (y.min() < 1 or y.max() > 10):
        raise UserError(f"{path}: labels should be 1..10 (10 is the digit 0), found {y.min()}..{y.max()}")
    n = x.shape[3]
    images = np.empty((n, 3, 32, 32), dtype=np.uint8)
    for start in range(0, n, CONVERT_CHUNK):  # HWCN -> NCHW in chunks: no second full-size temporary
        stop = min(start + CONVERT_CHUNK, n)
        images[start:stop] = x[:, :, :, start:stop].transpose(3, 2, 0, 1)
    labels = (y.astype(np.int64) % 10)  # 10 means the digit 0
    return images, labels


@register("svhn")
def load_svhn(cfg: Config, split: str, data_dir: str) -> ArrayDataset:
    if split not in SPLIT_FILES:
        raise UserError(f"svhn has splits train (extra_32x32.mat), val (train_32x32.mat), test; not {split!r}")
    remote = REMOTES[SPLIT_FILES[split]]
    folder = Path(data_dir).expanduser() if data_dir else default_data_dir("svhn")
    path = fetch_files("svhn", [remote], folder, source=SOURCE,
                       companions=[r.filename for r in REMOTES.values()])[remote.filename]
    images, labels = read_svhn_mat(path)
    if split in ("train", "extra"):
        print(f"svhn: training on {path.name} ({len(images):,} images, as the official ALI code does); "
              f"monitoring on train_32x32.mat", file=sys.stderr)
    return ArrayDataset("svhn", split, images, labels, class_names=tuple(str(d) for d in range(10)))
