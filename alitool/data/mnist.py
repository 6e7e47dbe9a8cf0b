"""MNIST (LeCun et al. 1998) and Fashion-MNIST (Xiao et al. 2017) in their official IDX files.

Not datasets of the paper's tables, but the standard small 28x28 grayscale benchmarks ALI's successors report
on (ALICE, for one, shows MNIST reconstructions, where ALI's are known to often change the digit), and small
enough to train on a CPU.

Files: ``train-images-idx3-ubyte.gz`` (60,000 images), ``train-labels-idx1-ubyte.gz``,
``t10k-images-idx3-ubyte.gz`` (10,000), ``t10k-labels-idx1-ubyte.gz``; the unpacked files without ``.gz`` are
read too. An IDX file is a big-endian header (two zero bytes, a type byte, 0x08 = uint8, the number of
dimensions, then one uint32 per dimension) followed by the raw values.

Searched: --data-dir (and torchvision's ``MNIST/raw`` / ``FashionMNIST/raw`` under it) or else
``$ALITOOL_DATA/<name>``; Fashion-MNIST also where the Debian/Ubuntu package ``dataset-fashion-mnist`` installs
it (``/usr/share/datasets/fashion-mnist``). Splits: ``train`` and ``test``, the official ones.
"""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import numpy as np

from alitool.config import Config
from alitool.data import ArrayDataset, register
from alitool.data.download import Remote, default_data_dir, fetch_files
from alitool.errors import UserError

MNIST_SOURCE = "https://ossci-datasets.s3.amazonaws.com/mnist/"  # the mirror torchvision uses (yann.lecun.com is gone)
FASHION_SOURCE = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
DEBIAN_FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")  # apt-get install dataset-fashion-mnist

MNIST_MD5 = {
    "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
    "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
    "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
    "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
}
FASHION_MD5 = {
    "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
    "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
    "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
    "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
}
SPLIT_PREFIX = {"train": "train", "test": "t10k"}
FASHION_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                   "Ankle boot")


def read_idx(path: Path, expect_dims: int) -> np.ndarray:
    """An IDX file (gzipped or not) as a uint8 array of its declared shape; one-line errors otherwise."""
    path = Path(path)
    try:
        # a bytearray, so that the arrays viewing it are writable (torch.from_numpy warns on read-only ones)
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                raw = bytearray(f.read())
        else:
            raw = bytearray(path.read_bytes())
    except EOFError:
        raise UserError(f"{path}: truncated gzip file (it ends before its end marker); download it again") from None
    except (gzip.BadGzipFile, zlib.error) as err:
        raise UserError(f"{path}: not a valid gzip file ({err}); download it again") from None
    except OSError as err:
        raise UserError(f"{path}: cannot read: {err}") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise UserError(f"{path}: not an IDX file (bad magic number)")
    if raw[2] != 0x08:
        raise UserError(f"{path}: IDX value type 0x{raw[2]:02x}; expected 0x08 (unsigned bytes)")
    ndim = raw[3]
    if ndim != expect_dims:
        raise UserError(f"{path}: an IDX file of {ndim} dimensions; expected {expect_dims}")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise UserError(f"{path}: truncated IDX header")
    shape = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    expected = int(np.prod(shape, dtype=np.int64)) if shape else 0
    if len(raw) - header != expected:
        raise UserError(f"{path}: the header declares {list(shape)} = {expected} values but the file holds "
                        f"{len(raw) - header} (truncated or corrupt)")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)


def load_idx_pair(images_path: Path, labels_path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 [N, 1, H, W], labels int64 [N]) from an IDX image file and its label file."""
    images = read_idx(images_path, 3)
    labels = read_idx(labels_path, 1).astype(np.int64)
    if len(images) != len(labels):
        raise UserError(f"{images_path}: {len(images)} images but {labels_path.name} has {len(labels)} labels")
    return np.ascontiguousarray(images[:, None]), labels


def _load(name: str, source: str, md5: dict[str, str], split: str, data_dir: str,
          extra_dirs: tuple[Path, ...], torchvision_folder: str, hint: str = "") -> ArrayDataset:
    if split not in SPLIT_PREFIX:
        raise UserError(f"{name} has splits train and test; not {split!r}")
    prefix = SPLIT_PREFIX[split]
    wanted = [f"{prefix}-images-idx3-ubyte.gz", f"{prefix}-labels-idx1-ubyte.gz"]
    folder = Path(data_dir).expanduser() if data_dir else default_data_dir(name)
    dirs = [folder / torchvision_folder / "raw", *extra_dirs]
    paths = fetch_files(name, [Remote(f, source + f, md5=md5[f]) for f in wanted], folder, dirs, source=source + hint,
                        alternatives={f: [f[: -len(".gz")]] for f in wanted})
    images, labels = load_idx_pair(paths[wanted[0]], paths[wanted[1]])
    classes = FASHION_CLASSES if name == "fashion-mnist" else tuple(str(d) for d in range(10))
    return ArrayDataset(name, split, images, labels, class_names=classes)


@register("mnist")
def load_mnist(cfg: Config, split: str, data_dir: str) -> ArrayDataset:
    return _load("mnist", MNIST_SOURCE, MNIST_MD5, split, data_dir, (), "MNIST")


@register("fashion-mnist")
def load_fashion_mnist(cfg: Config, split: str, data_dir: str) -> ArrayDataset:
    # The Debian package's files are searched after --data-dir / the default folder, before any download.
    return _load("fashion-mnist", FASHION_SOURCE, FASHION_MD5, split, data_dir, (DEBIAN_FASHION_DIR,), "FashionMNIST",
                 hint=" (or: apt-get install dataset-fashion-mnist)")
