"""Checkpoints: safe by construction.

A checkpoint is a dict of plain state dicts (unwrapped modules: no DDP ``module.`` or compile ``_orig_mod.``
prefixes), optimizer states, counters, the resolved config as plain data, and the tool version. It is written
to a temporary file in the same folder and moved into place with ``os.replace`` (``alitool.atomic``), so a
process killed at any moment leaves either the old or the new file, never a half-written one. It is read with
``torch.load(weights_only=True)``: a file that carries pickled objects is refused, never executed.
"""

from __future__ import annotations

import hashlib
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch

from alitool import __version__
from alitool.atomic import atomic_write_bytes
from alitool.config import Config, from_dict, to_dict
from alitool.errors import UserError, one_line

FORMAT = "alitool-checkpoint/1"
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")


def clean_state_dict(state: dict[str, Any]) -> dict[str, Any]:
    """Strip DDP / torch.compile wrapper prefixes so the file loads into a plain module."""
    cleaned = {}
    for key, value in state.items():
        changed = True
        while changed:
            changed = False
            for prefix in _WRAPPER_PREFIXES:
                if key.startswith(prefix):
                    key, changed = key[len(prefix) :], True
        cleaned[key] = value
    return cleaned


def save_checkpoint(path: Path, *, cfg: Config, models: dict[str, torch.nn.Module],
                    optimizers: dict[str, torch.optim.Optimizer] | None = None,
                    step: int = 0, epoch: int = 0, extra: dict[str, Any] | None = None) -> None:
    payload = {
        "format": FORMAT,
        "version": __version__,
        "config": to_dict(cfg),
        "step": step,
        "epoch": epoch,
        "models": {name: clean_state_dict(m.state_dict()) for name, m in models.items()},
        "optimizers": {name: o.state_dict() for name, o in (optimizers or {}).items()},
        "extra": extra or {},
    }
    atomic_write_bytes(Path(path), lambda f: torch.save(payload, f))


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint written by ``save_checkpoint``; any other file gets a one-line UserError."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: checkpoint not found")
    if not zipfile.is_zipfile(path):  # torch.save writes a zip archive; anything else is not ours
        raise UserError(f"{path}: not a readable checkpoint (not a torch.save archive; corrupt or truncated?)")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        reason = one_line(err, 120, default="unsupported content")
        raise UserError(f"{path}: refused: the file holds pickled objects, not plain tensors ({reason})") from None
    except Exception as err:  # noqa: BLE001 - a damaged file can fail anywhere inside torch's unpickler
        reason = one_line(err, 160, default="unreadable")
        raise UserError(f"{path}: not a readable checkpoint (corrupt or truncated?): {reason}") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise UserError(f"{path}: not an alitool checkpoint (no '{FORMAT}' marker)")
    payload["config"] = from_dict(payload["config"])
    return payload


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
