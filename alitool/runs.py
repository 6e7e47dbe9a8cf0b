"""Run folders: ``runs/<name>``, then ``runs/<name>-2``, ... and finding the newest one."""

from __future__ import annotations

import re
from pathlib import Path

from alitool.errors import UserError

DEFAULT_ROOT = Path("runs")
CHECKPOINT = "checkpoint.pt"


def new_run_dir(name: str, root: Path = DEFAULT_ROOT) -> Path:
    """Create and return the first free ``root/name``, ``root/name-2``, ... folder."""
    root.mkdir(parents=True, exist_ok=True)
    for i in range(1, 100000):
        path = root / (name if i == 1 else f"{name}-{i}")
        try:
            path.mkdir()
        except FileExistsError:
            continue
        return path
    raise UserError(f"{root}: no free run folder name for {name!r}")


def newest_run(root: Path = DEFAULT_ROOT, must_contain: str = CHECKPOINT) -> Path:
    """The most recently modified run folder under ``root`` that holds ``must_contain``."""
    candidates = [p.parent for p in root.glob(f"*/{must_contain}")] if root.is_dir() else []
    if not candidates:
        raise UserError(f"no run with a {must_contain} under {root}/; train one first: alitool train digits")
    return max(candidates, key=lambda p: (p / must_contain).stat().st_mtime)


def run_checkpoint(run_or_file: str | Path) -> Path:
    """A run folder or a checkpoint file -> the checkpoint file."""
    path = Path(run_or_file)
    if path.is_dir():
        path = path / CHECKPOINT
    if not path.is_file():
        raise UserError(f"{path}: no checkpoint there")
    return path


def run_name_of(path: Path) -> str:
    return re.sub(r"-\d+$", "", path.name)
