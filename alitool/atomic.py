"""Atomic file writes, one way for every stage: a finished artifact (checkpoint, ONNX file, features, picture,
video, cache) appears under its name whole or not at all.

Supporting machinery for the paper's pipeline (Dumoulin et al. 2017, section 2: training the networks, then
running the encoder G_z(x) and decoder G_x(z)); nothing here is part of the model itself.

A temporary file is created beside the target (same folder, hence the same file system, so ``os.replace`` is an
atomic rename), filled, flushed to disk, then moved over the target; any failure removes it. It is created with
``os.open(..., 0o666)`` so that the kernel applies the process umask, exactly as for a plainly opened file: the
umask is never read or changed, which would race with other threads (the encode path writes from several).

Files that belong together (the features ``.npy`` and its index) land through ``commit_together``: every temporary
is complete and synced first; then each target but the last is renamed into place after a hard link (or, where
the file system has none, a copy) of its previous content is kept as ``.<name>.<random>.bak``; the last rename is
the commit point. If any rename fails, the targets already replaced get their previous content back from the
backups (or are removed, when there was none) and the temporaries are removed, so the old pair stays a pair.
The backups are removed once all renames are done.

A process killed between two renames (SIGKILL, power loss) cannot run that rollback, so the renames are preceded by
a journal: ``.<last name>.commit`` beside the targets, written (and synced) once every temporary is complete, and
removed after the last rename. Its presence means "these temporaries are the new pair": ``finish_interrupted_commit``
renames whichever are still there into place (rolling forward, since all were complete) and removes the journal.
The next writer of the output runs it under the output's lock (``alitool.outputs.claim``), before stale
temporaries are cleaned up; until then a reader may see the new index beside the old ``.npy``, and their row counts
differ.

Where and how an output may be written at all (one-line errors, locks, stale temporaries): ``alitool.outputs``.

No torch, no third-party import, no side effect at import: the running side uses this as much as training does.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import IO

_TEMP_FLAGS = os.O_RDWR | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0)


def temp_beside(path: str | Path, suffix: str = ".tmp") -> tuple[int, Path]:
    """(open read-write file descriptor, path) of a new hidden, empty file next to ``path``, named
    ``.<name>.<random><suffix>``. O_EXCL makes the name ours alone; mode 0o666 lets the umask decide the
    permissions, as for any file the user creates. ``suffix`` keeps an extension for writers that choose a
    format from it (OpenCV's video container)."""
    path = Path(path)
    while True:
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}{suffix}")
        try:
            return os.open(tmp, _TEMP_FLAGS, 0o666), tmp
        except FileExistsError:  # a leftover of a killed run with the same random part: draw again
            continue


def commit(tmp: str | Path, path: str | Path, file: IO | None = None) -> None:
    """Make ``tmp`` durable and move it over ``path``. ``file``: ``tmp``'s open file object, flushed, synced and
    closed here; without it the file (written by someone else, such as OpenCV) is opened to be synced."""
    _make_durable(tmp, file)
    os.replace(tmp, path)


def _make_durable(tmp: str | Path, file: IO | None) -> None:
    """fsync ``tmp`` (through ``file``, then closed, when the writer holds it open; else opened to be synced)."""
    if file is None:
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
    else:
        file.flush()
        os.fsync(file.fileno())
        file.close()


def discard(tmp: str | Path, file: IO | None = None) -> None:
    """Close ``file`` (if given) and remove ``tmp``; the target is left as it was."""
    if file is not None:
        file.close()
    Path(tmp).unlink(missing_ok=True)


def atomic_write_bytes(path: str | Path, writer: Callable[[IO[bytes]], object]) -> None:
    """Call ``writer(binary_file)`` on a temporary file next to ``path``, fsync, then rename it over ``path``.
    On any failure (the writer's, a full disk, an interrupt) the temporary file is removed and ``path`` keeps
    its previous content."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = temp_beside(path)
    try:
        f = os.fdopen(fd, "wb")
    except BaseException:
        os.close(fd)
        discard(tmp)
        raise
    try:
        with f:
            writer(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        discard(tmp)
        raise


def _backup(path: Path) -> Path | None:
    """A hidden hard link (or copy) of ``path``'s current content beside it, or None when ``path`` is no file."""
    if not path.is_file():
        return None
    fd, backup = temp_beside(path, ".bak")
    os.close(fd)
    try:
        backup.unlink()
        os.link(path, backup)
    except OSError:  # no hard links here (some network and FAT file systems): a copy, kept as small files are
        shutil.copy2(path, backup)
    return backup


def journal_path(path: str | Path) -> Path:
    """The journal of a ``commit_together`` whose last (commit point) target is ``path``."""
    path = Path(path)
    return path.with_name(f".{path.name}.commit")


def _sync_folder(folder: Path) -> None:
    """fsync a folder, so that the names created or renamed in it survive a power loss (POSIX only)."""
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:  # Windows cannot open folders; nothing to sync there
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _write_journal(items: list[tuple[Path, Path, IO | None]]) -> Path:
    """Record ``(temporary, target)`` names (one folder for all) in the journal beside the last target."""
    folder = Path(items[-1][1]).parent
    if any(Path(tmp).parent != folder or Path(path).parent != folder for tmp, path, _f in items):
        raise ValueError("commit_together: every temporary and target must be in one folder")
    pairs = [[Path(tmp).name, Path(path).name] for tmp, path, _f in items]
    journal = journal_path(items[-1][1])
    atomic_write_bytes(journal, lambda f: f.write(json.dumps(pairs).encode("utf-8", "surrogateescape")))
    _sync_folder(folder)
    return journal


def finish_interrupted_commit(path: str | Path) -> bool:
    """Complete a ``commit_together`` that was killed between its renames, if ``path`` (its last target) has a
    journal: rename each temporary still there over its target, then remove the journal. The caller must hold
    the output's lock (``alitool.outputs.claim`` does this). Returns whether there was anything to finish."""
    journal = journal_path(path)
    try:
        pairs = json.loads(journal.read_bytes().decode("utf-8", "surrogateescape"))
    except FileNotFoundError:
        return False
    except (OSError, ValueError):  # unreadable or not ours: the temporaries it named are left to the cleanup
        journal.unlink(missing_ok=True)
        return False
    folder = journal.parent
    for pair in pairs if isinstance(pairs, list) else ():
        if not (isinstance(pair, list) and len(pair) == 2 and all(isinstance(n, str) and "/" not in n for n in pair)):
            continue
        tmp, target = folder / pair[0], folder / pair[1]
        if tmp.is_file():
            os.replace(tmp, target)
    _sync_folder(folder)
    journal.unlink(missing_ok=True)
    return True


def commit_together(items: list[tuple[Path, Path, IO | None]]) -> None:
    """Land several temporary files, all in one folder, as one step: ``items`` are ``(tmp, path, open file or
    None)``, renamed in this order, the last one being the commit point (see the module docstring). On failure
    every target is as it was, every temporary is removed, and the error is raised; a process killed between
    the renames leaves a journal that ``finish_interrupted_commit`` completes."""
    for tmp, _path, file in items:
        _make_durable(tmp, file)
    try:
        journal = _write_journal(items)
    except BaseException:
        for tmp, _path, _file in items:
            discard(tmp)
        raise
    done: list[tuple[Path, Path | None]] = []
    backups: list[Path] = []
    try:
        for i, (tmp, path, _file) in enumerate(items):
            path = Path(path)
            backup = _backup(path) if i < len(items) - 1 else None
            if backup is not None:
                backups.append(backup)
            os.replace(tmp, path)
            done.append((path, backup))
        _sync_folder(journal.parent)
    except BaseException:
        for path, backup in reversed(done):
            try:
                if backup is not None:
                    os.replace(backup, path)
                else:
                    path.unlink(missing_ok=True)
            except OSError:
                pass
        for tmp, _path, _file in items:
            discard(tmp)
        raise
    finally:
        journal.unlink(missing_ok=True)
        for backup in backups:
            Path(backup).unlink(missing_ok=True)
