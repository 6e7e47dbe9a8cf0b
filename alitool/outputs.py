"""The one rule for every writer of alitool (features .npy + index, PNG, video, export folder, run folder): where an
output may go, who may write it, and what is left behind.

Supporting machinery for the paper's pipeline (Dumoulin et al. 2017, section 2); nothing here is part of the model.

1. ``check_destination(path, inputs=...)`` runs before any work starts and fails with one line (``UserError``,
   exit status 2): the folder that will hold ``path`` must be creatable and writable (``os.access`` *and* a real
   probe: a temporary file created and removed there, so that read-only mounts, immutable folders and root's
   ``os.access`` are all caught), ``path`` must not be an existing folder (an existing file, for a folder output),
   must have a name (``out/.npy`` has none before its extension) and must not be one of the inputs.
2. ``claim(path, ...)`` checks, then locks: ``fcntl.flock`` on ``.<name>.lock`` beside ``path`` (a file or a
   folder), held until ``release()`` (or the process's death: the kernel drops the lock, so a killed run never
   blocks the next). The lock file holds the holder's pid, start time and command line; a second process gets one
   line naming them. After ``flock`` the lock file's inode is compared with the name's, so removing the lock file
   on release cannot let two processes hold two different locks for one name. Claims are re-entrant within a
   process (the command claims ``--out`` before opening the model; the library writer claims it again).
3. With the lock held, a features pair whose writer was killed between its two renames is finished from its
   journal (``alitool.atomic.finish_interrupted_commit``). Then stale temporaries are removed:
   ``.<name>.<8 hex>.tmp[.ext]`` and ``.bak`` files of the claimed names older than the claim (what a SIGKILLed
   writer left), and those of any other name in the folder whose own lock file is there and free (a killed
   writer of another output).
4. Writers fill temporary files beside their targets (``alitool.atomic.temp_beside``) and rename them into place
   (``commit``); several files that belong together (the ``.npy`` and its index) land through
   ``alitool.atomic.commit_together``.

No torch, no third-party import: the running side uses this as much as training does.
"""

from __future__ import annotations

import errno
import os
import re
import sys
import threading
import time
from collections.abc import Iterable
from pathlib import Path

from alitool.errors import UserError

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; outputs are still written atomically
    fcntl = None

_TEMP_PATTERN = r"\.[0-9a-f]{8}\.(?:tmp|bak)(?:\.[A-Za-z0-9]+)?"


def _reason(err: OSError) -> str:
    if err.errno in (errno.EACCES, errno.EPERM):
        return "permission denied"
    if err.errno == errno.EROFS:
        return "read-only file system"
    if err.errno == errno.ENOSPC:
        return "no space left on the device"
    return (err.strerror or str(err)).lower()


def _show(path: Path) -> str:
    return str(path) if str(path) else "."


def _probe(folder: Path, name: str, what: str, shown: Path) -> None:
    """Create and remove a temporary file in ``folder``: the only test that a folder really takes new files."""
    from alitool.atomic import discard, temp_beside

    if not os.access(folder, os.W_OK | os.X_OK):
        raise UserError(f"{what} {shown}: cannot write in {_show(folder)} (permission denied)")
    try:
        fd, tmp = temp_beside(folder / name, ".tmp")
    except OSError as err:
        raise UserError(f"{what} {shown}: cannot write in {_show(folder)} ({_reason(err)})") from None
    os.close(fd)
    discard(tmp)


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve() or (a.exists() and b.exists() and os.path.samefile(a, b))
    except OSError:
        return False


def check_destination(path: str | Path, *, inputs: Iterable[str | Path] = (), folder: bool = False,
                      what: str = "--out") -> Path:
    """Fail with one line (UserError) unless ``path`` can be written: see the module docstring, rule 1.
    ``folder``: ``path`` is an output folder (a run or export folder), which may exist already. ``inputs``: paths
    (or ``clip.mp4@N`` frame references) the command reads. Creates nothing; returns ``path``."""
    path = Path(path)
    shown = path
    if not path.name or path.name in (".", ".."):
        raise UserError(f"{what} {shown}: names a folder, not a {'folder to create' if folder else 'file'}")
    if path.is_dir():
        if not folder:
            raise UserError(f"{what} {shown}: is an existing folder; give a file name")
        _probe(path, ".alitool-probe", what, shown)
    elif path.exists() or path.is_symlink():
        if folder:
            raise UserError(f"{what} {shown}: is a file, not a folder; name a folder")
    for given in inputs:
        text = str(given)
        candidates = [Path(text)]
        if "@" in text:
            candidates.append(Path(text.rsplit("@", 1)[0]))
        if any(_same_file(path, c) for c in candidates):
            raise UserError(f"{what} {shown}: is also an input; writing it would destroy it (choose another name)")
    # the nearest folder that exists must be a folder we can write in
    parent = path.parent
    child = path.name
    while not parent.exists() and not parent.is_symlink():
        child, parent = parent.name, parent.parent
    if not parent.is_dir():
        raise UserError(f"{what} {shown}: {_show(parent)} is a file, not a folder")
    _probe(parent, child, what, shown)
    return path


# -- locks ------------------------------------------------------------------------------------------------------

_HELD: dict[str, Claim] = {}
_HELD_LOCK = threading.Lock()


def lock_path(path: str | Path) -> Path:
    path = Path(path)
    return path.with_name(f".{path.name}.lock")


def _describe_holder(lock: Path) -> str:
    try:
        text = lock.read_text(encoding="utf-8", errors="replace").strip()
    except OSError:
        text = ""
    return text.splitlines()[0] if text else "a process that is starting"


class Claim:
    """An output claimed by this process: the lock on ``.<name>.lock`` beside it. ``release()`` drops it (and
    removes the lock file and the parent folders the claim created, when empty); re-entrant claims count."""

    def __init__(self, path: Path, fd: int | None, created: list[Path]):
        self.path, self._fd, self._created, self.count = path, fd, created, 1
        self.since = time.time()

    def release(self) -> None:
        with _HELD_LOCK:
            self.count -= 1
            if self.count > 0:
                return
            _HELD.pop(str(lock_path(self.path).absolute()), None)
        if self._fd is not None:
            try:
                lock_path(self.path).unlink()  # still ours: removed while locked, so no one else holds this inode
            except OSError:
                pass
            os.close(self._fd)
            self._fd = None
        for folder in reversed(self._created):
            try:
                folder.rmdir()  # only when empty: the command failed before writing anything there
            except OSError:
                break

    def __enter__(self) -> Claim:
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def _try_lock(lock: Path) -> int | None:
    """An fd holding ``lock`` exclusively, or None when another process holds it."""
    while True:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        except OSError:
            os.close(fd)
            raise
        try:  # the holder we waited on may have removed the file: lock the file that carries the name now
            if os.stat(lock).st_ino == os.fstat(fd).st_ino:
                return fd
        except FileNotFoundError:
            pass
        os.close(fd)


def _own_temporaries(name: str) -> re.Pattern:
    return re.compile(re.escape(f".{name}") + _TEMP_PATTERN)


def remove_stale_temporaries(folder: Path, names: Iterable[str], before: float) -> None:
    """Remove ``.<name>.<hex>.tmp*`` / ``.bak`` files of ``names`` in ``folder`` last modified before ``before``
    (the caller holds their lock), then those of other names whose lock file is there and free."""
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return
    mine = [_own_temporaries(n) for n in names]
    others: dict[str, list[Path]] = {}
    for entry in entries:
        if not entry.name.startswith(".") or not entry.is_file(follow_symlinks=False):
            continue
        if any(p.fullmatch(entry.name) for p in mine):
            try:
                if entry.stat(follow_symlinks=False).st_mtime < before:
                    os.unlink(entry.path)
            except OSError:
                pass
            continue
        match = re.fullmatch(r"\.(.+)" + _TEMP_PATTERN, entry.name)
        if match:
            others.setdefault(match.group(1), []).append(Path(entry.path))
    if fcntl is None:
        return
    for name, temps in others.items():
        lock = folder / f".{name}.lock"
        if not lock.is_file() or str(lock.absolute()) in _HELD:
            continue
        try:
            fd = _try_lock(lock)
        except OSError:
            continue
        if fd is None:  # its writer is alive
            continue
        try:
            for tmp in temps:
                tmp.unlink(missing_ok=True)
            lock.unlink(missing_ok=True)
        except OSError:
            pass
        finally:
            os.close(fd)


def claim(path: str | Path, *, inputs: Iterable[str | Path] = (), folder: bool = False, what: str = "--out",
          also: Iterable[str | Path] = (), clean: Iterable[str] = ()) -> Claim:
    """Check ``path`` (``check_destination``, also each of ``also``: files written with it, such as the index
    of a .npy), lock it against other processes, and remove stale temporaries (module docstring, rules 2-3).
    ``clean``: for a folder output, its subfolders (``"."`` for itself) whose stale temporaries are removed.
    Creates the parent folders. Returns the Claim; ``release()`` it (or use ``with``) when done."""
    path = Path(path)
    also = [Path(a) for a in also]
    inputs = list(inputs)
    key = str(lock_path(path).absolute())
    with _HELD_LOCK:
        held = _HELD.get(key)
        if held is not None:
            held.count += 1
            return held
    check_destination(path, inputs=inputs, folder=folder, what=what)
    for other in also:
        check_destination(other, inputs=inputs, what=what)
    created = []
    for parent in reversed(path.parents):
        if not parent.exists():
            try:
                parent.mkdir()
            except FileExistsError:
                continue
            except OSError as err:
                raise UserError(f"{what} {path}: cannot create {parent} ({_reason(err)})") from None
            created.append(parent)
    fd = None
    if fcntl is not None:
        lock = lock_path(path)
        try:
            fd = _try_lock(lock)
        except OSError as err:
            raise UserError(f"{what} {path}: cannot create the lock file {lock} ({_reason(err)})") from None
        if fd is None:
            raise UserError(f"{what} {path}: another alitool process is writing it ({_describe_holder(lock)}); "
                            f"wait for it to end, or choose another {what}")
        stamp = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
        command = " ".join(["alitool", *sys.argv[1:]]) if sys.argv else "alitool"
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()}, since {stamp}: {command}\n".encode("utf-8", "replace"))
    result = Claim(path, fd, created)
    with _HELD_LOCK:
        _HELD[key] = result
    for sub in clean if folder else ():  # the folder is ours: stale temporaries of any name in it go
        _remove_all_stale(path / sub, result.since)
    from alitool.atomic import finish_interrupted_commit

    for target in (path, *also):  # a pair killed between its renames is finished before its temporaries go
        try:
            finish_interrupted_commit(target)
        except OSError as err:
            result.release()
            raise UserError(f"{what} {target}: cannot finish the interrupted write of the previous run "
                            f"({_reason(err)})") from None
    remove_stale_temporaries(path.parent, [path.name, *(a.name for a in also)], result.since)
    return result


def _remove_all_stale(folder: Path, before: float) -> None:
    pattern = re.compile(r"\..+" + _TEMP_PATTERN)
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return
    for entry in entries:
        try:
            if pattern.fullmatch(entry.name) and entry.is_file(follow_symlinks=False) and \
                    entry.stat(follow_symlinks=False).st_mtime < before:
                os.unlink(entry.path)
        except OSError:
            pass
