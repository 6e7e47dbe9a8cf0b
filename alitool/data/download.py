"""Finding a dataset's official files, and downloading them (checksummed, atomically) where they are missing.

The datasets of the paper's experiments (Dumoulin et al. 2017, section 4: SVHN, CIFAR-10, CelebA, Tiny ImageNet)
and the small ones (MNIST, Fashion-MNIST) come as files in official formats. A loader names the files it needs;
``fetch_files`` finds each one in the folders searched, or downloads it into the data dir:

- the download streams into a temporary file next to the target (``.<name>.XXXX.tmp``), hashes it on the way,
  checks the byte count against Content-Length and the hash against the official checksum, and only then
  renames it into place: a partial or corrupt download never carries the official name;
- with no network (or ``ALITOOL_OFFLINE=1``) the answer is ONE line: the files expected, the folder searched and
  the URL they come from. Connection failures are quick (a short timeout), so offline use is not slowed down.

Files the user placed themselves are not required to match the official checksums (tests and users may bring
smaller files in the same format); each loader checks their structure instead and reports a truncated or
malformed file by name.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import socket
import sys
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from alitool.atomic import atomic_write_bytes
from alitool.errors import UserError

OFFLINE_ENV = "ALITOOL_OFFLINE"  # "1": never try the network
DATA_ENV = "ALITOOL_DATA"  # root of the default dataset folders (default ~/.cache/alitool/datasets)
CONNECT_TIMEOUT_S = 10.0  # per socket operation: an unreachable host fails in seconds, not minutes
CHUNK = 1 << 20


@dataclass(frozen=True)
class Remote:
    """One official file: its name on disk, the URL it is published at, and its published checksum."""

    filename: str
    url: str
    md5: str = ""
    sha256: str = ""

    @property
    def algorithm(self) -> str:
        return "sha256" if self.sha256 else "md5"

    @property
    def checksum(self) -> str:
        return self.sha256 or self.md5


class DownloadError(UserError):
    """The network could not deliver a complete, verified file."""


class ChecksumError(DownloadError):
    """A file's content does not match its official checksum."""


def default_data_dir(dataset: str) -> Path:
    """Where a dataset lives when no --data-dir is given: ``$ALITOOL_DATA/<dataset>``."""
    root = os.environ.get(DATA_ENV) or str(Path.home() / ".cache" / "alitool" / "datasets")
    return Path(root).expanduser() / dataset


def offline() -> bool:
    return os.environ.get(OFFLINE_ENV, "").strip().lower() in ("1", "true", "yes")


def file_digest(path: Path, algorithm: str = "sha256") -> str:
    digest = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def verify_checksum(path: Path, remote: Remote) -> None:
    """Raise ChecksumError (one line) unless ``path`` has ``remote``'s official checksum."""
    if not remote.checksum:
        return
    actual = file_digest(path, remote.algorithm)
    if actual != remote.checksum:
        raise ChecksumError(
            f"{path}: {remote.algorithm} {actual} does not match the official {remote.checksum}: the file is "
            f"corrupt or incomplete; delete it and download it again from {remote.url}"
        )


def _reason(err: BaseException) -> str:
    if isinstance(err, urllib.error.HTTPError):
        return f"HTTP {err.code} {err.reason}"
    if isinstance(err, urllib.error.URLError):
        err = err.reason if isinstance(err.reason, BaseException) else err
    if isinstance(err, (TimeoutError, socket.timeout)):
        return "timed out"
    if isinstance(err, OSError) and err.strerror:
        return err.strerror  # "Name or service not known", without the "[Errno -2]"
    text = str(err).strip() or type(err).__name__
    return " ".join(text.split())  # one line, whatever the OS message looked like


def download(remote: Remote, dest_dir: Path, timeout: float = CONNECT_TIMEOUT_S, progress: bool = True) -> Path:
    """Download ``remote`` into ``dest_dir``; the file appears under its name only when complete and verified."""
    dest = Path(dest_dir) / remote.filename
    try:
        response = urllib.request.urlopen(remote.url, timeout=timeout)  # noqa: S310 (official http(s) URLs)
    except (urllib.error.URLError, OSError, http.client.HTTPException, ValueError) as err:
        raise DownloadError(f"{remote.url}: download failed ({_reason(err)})") from None
    expected_len = int(response.headers.get("Content-Length") or 0) or None
    size = f" ({expected_len / 1e6:,.1f} MB)" if expected_len else ""
    print(f"downloading {remote.url}{size} into {dest.parent}", file=sys.stderr)
    digest = hashlib.new(remote.algorithm)
    received = 0

    def stream(f) -> None:
        nonlocal received
        from tqdm import tqdm

        with tqdm(total=expected_len, unit="B", unit_scale=True, desc=f"download {remote.filename}",
                  disable=not progress or None, file=sys.stderr, leave=False) as bar:
            while True:
                block = response.read(CHUNK)
                if not block:
                    break
                f.write(block)
                digest.update(block)
                received += len(block)
                bar.update(len(block))
        if expected_len is not None and received != expected_len:
            raise DownloadError(
                f"{remote.url}: download truncated ({received} of {expected_len} bytes); nothing was kept, try again"
            )
        if remote.checksum and digest.hexdigest() != remote.checksum:
            raise ChecksumError(
                f"{remote.url}: the downloaded file's {remote.algorithm} {digest.hexdigest()} does not match the "
                f"official {remote.checksum}; nothing was kept"
            )

    try:
        with response:
            dest.parent.mkdir(parents=True, exist_ok=True)  # only now: a failed connection leaves no folder behind
            atomic_write_bytes(dest, stream)
    except DownloadError:
        raise
    except (OSError, http.client.HTTPException) as err:  # connection reset, IncompleteRead, disk full, ...
        raise DownloadError(f"{remote.url}: download failed after {received} bytes ({_reason(err)}); "
                            f"nothing was kept") from None
    return dest


def find_file(names: Sequence[str], search_dirs: Sequence[Path]) -> Path | None:
    """The first existing ``dir/name`` over the folders, then the names (e.g. ``x.gz`` before ``x``)."""
    for folder in search_dirs:
        for name in names:
            path = Path(folder) / name
            if path.is_file():
                return path
    return None


def missing_message(dataset: str, filenames: Sequence[str], data_dir: Path, search_dirs: Sequence[Path],
                    source: str, why: str = "") -> str:
    """The one line a user sees when files are missing: what, where it was looked for, where it comes from."""
    others = [str(d) for d in search_dirs if Path(d) != Path(data_dir)]
    looked = f" (also searched {', '.join(others)})" if others else ""
    because = f" [{why}]" if why else ""
    them = "them" if len(filenames) > 1 else "it"
    return (f"{dataset}: missing {', '.join(filenames)} in {data_dir}{looked}{because}; download from {source} "
            f"and put {them} in {data_dir}, or pass --data-dir DIR")


def fetch_files(dataset: str, remotes: Sequence[Remote], data_dir: Path, search_dirs: Sequence[Path] = (),
                source: str = "", alternatives: dict[str, Sequence[str]] | None = None,
                companions: Sequence[str] = ()) -> dict[str, Path]:
    """Each remote's file, found in ``data_dir`` or ``search_dirs`` or else downloaded into ``data_dir``.

    ``alternatives`` maps a remote's filename to other names that stand for it (an unpacked ``x`` for ``x.gz``).
    ``companions`` are the dataset's other files: those missing too are named in the error, so that one
    message tells the user everything to fetch. Raises one UserError line when a file cannot be had.
    """
    data_dir = Path(data_dir).expanduser()
    dirs = [data_dir] + [Path(d) for d in search_dirs if Path(d) != data_dir]
    alternatives = alternatives or {}
    found: dict[str, Path] = {}
    missing: list[Remote] = []
    for remote in remotes:
        path = find_file([remote.filename, *alternatives.get(remote.filename, ())], dirs)
        if path is None:
            missing.append(remote)
        else:
            found[remote.filename] = path
    if not missing:
        return found
    names = [r.filename for r in missing]
    names += [c for c in companions if c not in names and c not in found and find_file([c], dirs) is None]
    source = source or " ".join(r.url for r in missing)
    if offline():
        raise UserError(missing_message(dataset, names, data_dir, dirs, source, f"{OFFLINE_ENV} is set"))
    for remote in missing:
        try:
            found[remote.filename] = download(remote, data_dir)
        except ChecksumError:
            raise
        except DownloadError as err:
            raise UserError(missing_message(dataset, names, data_dir, dirs, source, str(err))) from None
    return found
