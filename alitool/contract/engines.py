"""TensorRT engine files and their sidecars: the part of the artifact contract that `alitool export --trt` writes
and the TensorRT backend reads. An engine only runs on the TensorRT version and GPU it was built for, so each one
has a JSON sidecar beside it (``encoder.engine`` -> ``encoder.engine.json``) recording both, with the model's
``ModelMeta``.
"""

from __future__ import annotations

import json
from pathlib import Path

from alitool.contract.meta import ModelMeta
from alitool.contract.names import ENGINE_SIDECAR_SUFFIX, ENGINE_SUFFIXES
from alitool.errors import UserError

__all__ = ["ENGINE_SUFFIXES", "read_sidecar", "sidecar_path"]


def sidecar_path(engine: Path) -> Path:
    return engine.with_name(engine.name + ENGINE_SIDECAR_SUFFIX)


def read_sidecar(engine: Path) -> dict:
    """The sidecar of ``engine`` as a dict, its ``meta`` as a ``ModelMeta``; a missing or damaged one is one line."""
    side = sidecar_path(engine)
    if not side.is_file():
        raise UserError(f"{engine}: no {side.name} next to it, so the TensorRT version and GPU it was built for "
                        f"are unknown; rebuild it with `alitool export --trt`")
    try:
        info = json.loads(side.read_text(encoding="utf-8"))
        info["meta"] = ModelMeta.from_json(info["meta"])
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise UserError(f"{side}: unreadable engine sidecar ({err}); rebuild with `alitool export --trt`") from None
    return info
