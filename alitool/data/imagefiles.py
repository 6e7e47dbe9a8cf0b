"""Datasets stored as image files (CelebA, Tiny ImageNet, any folder): decoded once into compact uint8 arrays.

Each image goes through the one preprocessing of ``alitool.contract.preprocess`` (the same as INT8 calibration
and inference): decoded with OpenCV, centre-cropped to a square (or stretched, ``data.crop: stretch``) and
resized to the config's image size (paper section 4 / Appendix A: CelebA and Tiny ImageNet at 64x64), then
rounded to 8-bit levels, in a thread pool (OpenCV releases the GIL while decoding). The result is a uint8
[N, C, H, W] array: 200k CelebA images are 2.5 GB, not 10 GB of floats.

Decoding 200k JPEGs takes minutes on 2 cores, so large sets are cached as ``.npy`` under
``$ALITOOL_CACHE/decoded/`` (default ``~/.cache/alitool``), keyed by the files' names, sizes and mtimes, the
output shape and the crop: changing the folder, the image size, the channels or the crop decodes again. The
cache file is written atomically and memory-mapped (copy-on-write) when read.

Images can come from a folder or straight from the official zip archive (no unpacking needed); a bad image is
reported on one warning line and skipped, never fatal.
"""

from __future__ import annotations

import hashlib
import os
import sys
import zipfile
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from alitool.atomic import atomic_write_bytes
from alitool.contract.preprocess import (
    IMAGE_EXTENSIONS,
    MAX_FILE_BYTES,
    BadInput,
    Preprocess,
    decode_pixels,
    read_file,
)
from alitool.errors import UserError

CACHE_ENV = "ALITOOL_CACHE"
CACHE_MIN_IMAGES = 5000  # below this, decoding takes seconds and a cache file is not worth the disk
# v2: the contract's preprocessing (16-bit files rounded after resizing instead of truncated before it, large
# JPEGs decoded at reduced scale, the crop policy): arrays cached by v1 may differ, so they are not reused.
CACHE_FORMAT = "v2"
# An archive member that inflates more than this many times over its stored size, past a few MiB, is a
# decompression bomb, not a photo (JPEGs and PNGs barely compress further).
MAX_MEMBER_RATIO = 100
_RATIO_MIN_BYTES = 8 * 1024 * 1024


def cache_dir() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "alitool").expanduser() / "decoded"


class ImageSource:
    """Image files by name, from a folder or a zip archive; ``read(name)`` gives the encoded bytes."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.zip: zipfile.ZipFile | None = None
        if self.root.is_file():
            try:
                self.zip = zipfile.ZipFile(self.root)
            except (zipfile.BadZipFile, OSError) as err:
                raise UserError(f"{self.root}: not a readable zip archive (truncated or corrupt?): {err}") from None

    def __str__(self) -> str:
        return str(self.root)

    def list_images(self, prefix: str = "") -> list[str]:
        """Names (relative, '/'-separated) of every image under ``prefix``, recursively, sorted."""
        if self.zip is not None:
            return sorted(n for n in self.zip.namelist()
                          if n.startswith(prefix) and n.lower().endswith(IMAGE_EXTENSIONS) and not n.endswith("/"))
        base = self.root / prefix if prefix else self.root
        names = []
        for dirpath, dirnames, filenames in os.walk(base, followlinks=True):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            rel = Path(dirpath).relative_to(self.root)
            names.extend((rel / f).as_posix() for f in filenames
                         if f.lower().endswith(IMAGE_EXTENSIONS) and not f.startswith("."))
        return sorted(names)

    def exists(self, name: str) -> bool:
        if self.zip is not None:
            try:
                self.zip.getinfo(name)
            except KeyError:
                return False
            return True
        return (self.root / name).is_file()

    def read(self, name: str) -> bytes:
        """The bytes of any listed file (a label file, say); OSError / KeyError when unreadable."""
        if self.zip is not None:
            return self.zip.read(name)  # checks the member's CRC: a corrupt member raises, never half-decodes
        return (self.root / name).read_bytes()

    def read_image(self, name: str) -> bytes:
        """The bytes of one image, or BadInput: a member or file over ``MAX_FILE_BYTES``, a member that
        inflates over ``MAX_MEMBER_RATIO`` times (checked from the archive's directory, before inflating), a
        file that is not a regular file."""
        if self.zip is None:
            return read_file(self.root / name)
        info = self.zip.getinfo(name)
        if info.file_size > MAX_FILE_BYTES:
            raise BadInput(f"archive member is {info.file_size / 2**20:.0f} MiB, over the "
                           f"{MAX_FILE_BYTES / 2**20:.0f} MiB limit")
        if info.file_size > _RATIO_MIN_BYTES and info.file_size > MAX_MEMBER_RATIO * max(1, info.compress_size):
            raise BadInput(f"archive member inflates from {info.compress_size} bytes to {info.file_size} "
                           f"(over {MAX_MEMBER_RATIO}x: a decompression bomb)")
        with self.zip.open(info) as member:  # checks the member's CRC: a corrupt member raises, never half-decodes
            data = member.read(info.file_size + 1)
        if len(data) > info.file_size:
            raise BadInput("archive member is longer than its directory entry says (corrupt or crafted)")
        return data

    def fingerprint(self, names: Sequence[str]) -> str:
        """Changes when any listed file (or the archive) changes: the cache key's content part."""
        h = hashlib.sha256(str(self.root.resolve()).encode())
        if self.zip is not None:
            st = self.root.stat()
            h.update(f"{st.st_size}:{st.st_mtime_ns}".encode())
            h.update("\n".join(names).encode())
            return h.hexdigest()
        for name in names:
            st = (self.root / name).stat()
            h.update(f"{name}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        return h.hexdigest()


def _warn(msg: str) -> None:
    print(f"warning: {msg}", file=sys.stderr)


def decode_all(source: ImageSource, names: Sequence[str], size: int, channels: int,
               crop_box: tuple[int, int, int, int] | None = None, workers: int | None = None,
               warn: Callable[[str], None] = _warn, crop: str = "center") -> tuple[np.ndarray, np.ndarray]:
    """Decode ``names`` into uint8 [N, C, size, size]; returns (images, kept) where ``kept`` indexes ``names``.

    Unreadable or undecodable images are reported with one warning line each and left out.
    """
    if channels not in (1, 3):
        raise UserError(f"data.channels must be 1 (grayscale) or 3 (RGB) for image files, not {channels}")
    pre = Preprocess(size, channels, crop)
    out = np.empty((len(names), channels, size, size), dtype=np.uint8)
    ok = np.zeros(len(names), dtype=bool)

    def work(i: int) -> str | None:
        try:
            data = source.read_image(names[i])
        except BadInput as err:
            return f"{source}/{names[i]}: {err}; skipped"
        except (OSError, zipfile.BadZipFile, KeyError, ValueError) as err:
            return f"{source}/{names[i]}: cannot read ({' '.join(str(err).split())}); skipped"
        try:
            out[i] = decode_pixels(data, pre, crop_box)
        except BadInput as err:
            return f"{source}/{names[i]}: {err}; skipped"
        ok[i] = True
        return None

    workers = workers or min(8, os.cpu_count() or 1)
    from tqdm import tqdm

    with ThreadPoolExecutor(workers) as pool, tqdm(total=len(names), desc=f"decode {source}", unit="img",
                                                   disable=None if len(names) > 2000 else True,
                                                   file=sys.stderr, leave=False) as bar:
        for problem in pool.map(work, range(len(names)), chunksize=64):
            if problem:
                warn(problem)
            bar.update(1)
    kept = np.flatnonzero(ok)
    return (out if len(kept) == len(names) else out[kept]), kept


def load_images(source: ImageSource, names: Sequence[str], size: int, channels: int, tag: str,
                crop_box: tuple[int, int, int, int] | None = None,
                cache_min_images: int = CACHE_MIN_IMAGES, crop: str = "center") -> tuple[np.ndarray, np.ndarray]:
    """``decode_all`` with a disk cache for large sets (see the module docstring). ``tag`` names the cache file;
    ``crop`` is the config's ``data.crop``."""
    if len(names) < cache_min_images:
        return decode_all(source, names, size, channels, crop_box, crop=crop)
    fingerprint = source.fingerprint(names)
    key = hashlib.sha256(f"{CACHE_FORMAT}|{tag}|{size}|{channels}|{crop}|{crop_box}|{fingerprint}".encode())
    stem = cache_dir() / f"{tag}-{channels}x{size}x{size}-{key.hexdigest()[:16]}"
    images_path, kept_path = stem.with_suffix(".images.npy"), stem.with_suffix(".kept.npy")
    if images_path.is_file() and kept_path.is_file():
        try:
            kept = np.load(kept_path)
            images = np.load(images_path, mmap_mode="c")  # copy-on-write: writable in memory, file untouched
            if images.shape == (len(kept), channels, size, size) and images.dtype == np.uint8:
                return images, kept
        except (OSError, ValueError):
            pass  # a damaged cache is rebuilt, never trusted
        _warn(f"{images_path}: unreadable cache; decoding again")
    images, kept = decode_all(source, names, size, channels, crop_box, crop=crop)
    try:
        atomic_write_bytes(kept_path, lambda f: np.save(f, kept))
        atomic_write_bytes(images_path, lambda f: np.save(f, images))
        print(f"cached the decoded images in {images_path}", file=sys.stderr)
    except OSError as err:
        _warn(f"{images_path}: cannot write the decode cache ({err}); the next run decodes again")
    return images, kept
