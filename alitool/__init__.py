"""alitool: Adversarially Learned Inference (Dumoulin et al., ICLR 2017) from training to TensorRT.

The Python API (docs/python.md): ``model = alitool.load(path)``, then ``model.encode(x)``, ``model.decode(z)``,
``model.reconstruct(x)``, ``model.interpolate(a, b)``, ``model.sample(n)``. ``load``, ``Model`` and ``UserError``
are imported on first use (``__getattr__``), so that ``import alitool`` stays instant and torch-free.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = ["Model", "UserError", "load", "__version__"]

_LAZY = {"load": "alitool.api", "Model": "alitool.api", "UserError": "alitool.errors"}

if TYPE_CHECKING:
    from alitool.api import Model, load
    from alitool.errors import UserError


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'alitool' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
