"""CIFAR-10 (Krizhevsky 2009) for the paper's CIFAR-10 experiments (section 4.2, Appendix A table 3).

The *binary version* is read by preference: ``cifar-10-binary.tar.gz`` or its unpacked ``cifar-10-batches-bin/``,
files ``data_batch_1.bin`` .. ``data_batch_5.bin`` and ``test_batch.bin``, each a run of 3,073-byte records:
one label byte (0..9), then 1,024 red, 1,024 green and 1,024 blue bytes of a 32x32 image, row-major.
Nothing is unpickled. The tar.gz is read in place (no unpacking needed) and only those six members are read.

The *python version* (``cifar-10-python.tar.gz`` / ``cifar-10-batches-py/``, what torchvision downloads) is read
too, with a restricted unpickler that admits only what those files contain (numpy's array reconstruction, dicts,
lists, bytes, ints) and refuses any other class or function: a pickle cannot run code through this loader.

Splits as in the official ALI code (``ali/streams.py``): ``train`` = the first 45,000 training images, ``val`` =
the last 5,000 (in general the last tenth), ``test`` = the 10,000 test images; ``train-all`` = all 50,000.
"""

from __future__ import annotations

import io
import pickle
import tarfile
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np

from alitool.config import Config
from alitool.data import ArrayDataset, register
from alitool.data.download import Remote, default_data_dir, fetch_files
from alitool.errors import UserError

SOURCE_PAGE = "https://www.cs.toronto.edu/~kriz/cifar.html"
BINARY = Remote("cifar-10-binary.tar.gz", "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz",
                md5="c32a1d4ab5d03f1284b67883e8d87530")
BINARY_DIR, PYTHON_DIR, PYTHON_ARCHIVE = "cifar-10-batches-bin", "cifar-10-batches-py", "cifar-10-python.tar.gz"
RECORD = 1 + 3 * 32 * 32
TRAIN_FILES = [f"data_batch_{i}" for i in range(1, 6)]
TEST_FILES = ["test_batch"]
CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
SPLITS = ("train", "val", "test", "train-all")


# -- the binary version ------------------------------------------------------------------------------------
def parse_binary_records(raw: bytes, where: str) -> tuple[np.ndarray, np.ndarray]:
    """Records -> (images uint8 [N, 3, 32, 32], labels int64 [N])."""
    if len(raw) == 0 or len(raw) % RECORD:
        raise UserError(f"{where}: {len(raw)} bytes is not a whole number of {RECORD}-byte CIFAR-10 records "
                        f"(truncated or not the binary version)")
    records = np.frombuffer(raw, dtype=np.uint8).reshape(-1, RECORD)
    labels = records[:, 0].astype(np.int64)
    if labels.max() > 9:
        raise UserError(f"{where}: label byte {labels.max()} outside 0..9 (not a CIFAR-10 binary file)")
    return np.ascontiguousarray(records[:, 1:].reshape(-1, 3, 32, 32)), labels


# -- the python version, unpickled with a whitelist ----------------------------------------------------------
def _latin1_encode(text: str, encoding: str = "latin1") -> bytes:
    # Python 3 writes bytes in protocol-2 pickles as _codecs.encode(str, "latin1"); nothing else is admitted.
    if encoding not in ("latin1", "latin-1") or not isinstance(text, str):
        raise pickle.UnpicklingError(f"_codecs.encode with {encoding!r} is not part of a CIFAR-10 batch")
    return text.encode("latin1")


def _numpy_reconstruct() -> Callable:
    try:
        from numpy._core.multiarray import _reconstruct  # numpy >= 2
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core.multiarray import _reconstruct
    return _reconstruct


class RestrictedUnpickler(pickle.Unpickler):
    """Admits only the globals a CIFAR-10 python batch names; every other class or function is refused."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),
    }

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refused to load {module}.{name}: a CIFAR-10 batch holds only arrays, "
                                         f"dicts, lists and bytes")
        if name == "_reconstruct":
            return _numpy_reconstruct()
        if module == "_codecs":
            return _latin1_encode
        return getattr(np, name)


def restricted_loads(raw: bytes, where: str) -> object:
    try:
        # encoding="bytes": the official files were written by Python 2, whose str are bytes here.
        return RestrictedUnpickler(io.BytesIO(raw), encoding="bytes").load()
    except pickle.UnpicklingError as err:
        raise UserError(f"{where}: {err}") from None
    except (EOFError, ValueError, TypeError, KeyError, IndexError, AttributeError, MemoryError) as err:
        raise UserError(f"{where}: not a readable CIFAR-10 python batch (truncated or corrupt?): "
                        f"{type(err).__name__}: {' '.join(str(err).split())}") from None


def parse_python_batch(raw: bytes, where: str) -> tuple[np.ndarray, np.ndarray]:
    batch = restricted_loads(raw, where)
    if not isinstance(batch, dict):
        raise UserError(f"{where}: expected a dict, found {type(batch).__name__}")
    batch = {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in batch.items()}
    data, labels = batch.get("data"), batch.get("labels")
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        raise UserError(f"{where}: 'data' should be a uint8 [N, 3072] array")
    if not isinstance(labels, list) or len(labels) != len(data) or not all(isinstance(v, int) for v in labels):
        raise UserError(f"{where}: 'labels' should be a list of {len(data)} ints")
    labels_arr = np.asarray(labels, dtype=np.int64)
    if len(labels_arr) and (labels_arr.min() < 0 or labels_arr.max() > 9):
        raise UserError(f"{where}: labels outside 0..9")
    return np.ascontiguousarray(data.reshape(-1, 3, 32, 32)), labels_arr


# -- reading members from a folder or straight out of the tar.gz ---------------------------------------------
def _read_members(location: Path, inner_dir: str, names: list[str]) -> list[tuple[str, bytes]]:
    """The bytes of ``inner_dir/name`` for each name, from the folder ``location`` or the archive ``location``."""
    if location.is_dir():
        out = []
        for name in names:
            path = location / name
            if not path.is_file():
                raise UserError(f"{location}: missing {name} (an incomplete CIFAR-10 folder)")
            out.append((str(path), path.read_bytes()))
        return out
    wanted = {f"{inner_dir}/{name}": name for name in names}
    got: dict[str, bytes] = {}
    try:
        with tarfile.open(location, "r:gz") as tar:
            for member in tar:  # one pass; only the expected regular files are read, nothing is extracted
                if member.name in wanted and member.isfile():
                    got[wanted[member.name]] = tar.extractfile(member).read()
    except (tarfile.TarError, EOFError, zlib.error, OSError) as err:
        raise UserError(f"{location}: truncated or corrupt archive ({' '.join(str(err).split())}); "
                        f"delete it and download it again ({SOURCE_PAGE})") from None
    absent = [n for n in names if n not in got]
    if absent:
        raise UserError(f"{location}: the archive lacks {', '.join(f'{inner_dir}/{n}' for n in absent)}")
    return [(f"{location}:{inner_dir}/{n}", got[n]) for n in names]


def _locate(data_dir: Path) -> tuple[Path, str, bool]:
    """(folder or archive, its inner folder name, binary?) of the best CIFAR-10 copy in ``data_dir``."""
    for name, inner, binary in ((BINARY_DIR, BINARY_DIR, True), (BINARY.filename, BINARY_DIR, True),
                                (PYTHON_DIR, PYTHON_DIR, False), (PYTHON_ARCHIVE, PYTHON_DIR, False)):
        path = data_dir / name
        if path.exists():
            return path, inner, binary
    if data_dir.name == BINARY_DIR and (data_dir / "test_batch.bin").is_file():  # --data-dir at the folder itself
        return data_dir, BINARY_DIR, True
    if data_dir.name == PYTHON_DIR and (data_dir / "test_batch").is_file():
        return data_dir, PYTHON_DIR, False
    path = fetch_files("cifar10", [BINARY], data_dir, source=f"{BINARY.url} ({SOURCE_PAGE})")[BINARY.filename]
    return path, BINARY_DIR, True


def read_cifar10(data_dir: Path, names: list[str]) -> tuple[np.ndarray, np.ndarray]:
    location, inner, binary = _locate(data_dir)
    files = [n + ".bin" for n in names] if binary else names
    parse = parse_binary_records if binary else parse_python_batch
    parts = [parse(raw, where) for where, raw in _read_members(location, inner, files)]
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


@register("cifar10")
def load_cifar10(cfg: Config, split: str, data_dir: str) -> ArrayDataset:
    if split not in SPLITS:
        raise UserError(f"cifar10 has splits {', '.join(SPLITS)}; not {split!r}")
    folder = Path(data_dir).expanduser() if data_dir else default_data_dir("cifar10")
    images, labels = read_cifar10(folder, TEST_FILES if split == "test" else TRAIN_FILES)
    if split in ("train", "val"):
        n_val = len(images) // 10  # 5,000 of 50,000: the official code's subset=slice(45000, 50000)
        keep = slice(0, len(images) - n_val) if split == "train" else slice(len(images) - n_val, len(images))
        images, labels = images[keep], labels[keep]
    return ArrayDataset("cifar10", split, np.ascontiguousarray(images), labels, class_names=CLASSES)
