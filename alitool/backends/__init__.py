"""One inference interface over PyTorch checkpoints, ONNX Runtime and TensorRT engines.

``load_backend(path)`` returns an object with
- ``meta``: a ``ModelMeta`` (image size, channels, value range, latent dim, config, provenance),
- ``encode(images, kind="mean")``: float32 [N, C, H, W] in the model's value range -> float32 [N, D]
  (kind "mean": the posterior mean z_mean; "z": a sample of q(z|x); "paper": the section 4.3 SVM features),
- ``decode(z)``: float32 [N, latent_dim] -> float32 images [N, C, H, W].
- ``draws_posterior_samples``: whether ``encode(kind="z")`` draws from q(z|x) (a Gaussian encoder's eps, the noise
  of an encoder with noise inputs) or returns z_mean (a deterministic encoder; an export computes G_z(x, 0)).
A conditional model (paper section 4.4) takes its y [N, y_dim] as ``encode(images, kind, y=y)`` and
``decode(z, y=y)``; ``meta.y_kind`` and ``meta.y_names`` say what y means (alitool/conditional.py).
Inputs and outputs are NumPy arrays so that callers never need torch for ONNX / TensorRT models.

``open_model`` (``alitool.backends.opening``) is what the commands call: ``load_backend`` with one line for any
file that is not a usable model. This module imports neither NumPy nor a runtime, so that the CLI can build its
``--backend`` option from ``BACKEND_CHOICES`` and still start instantly.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from alitool.contract.names import ENGINE_SUFFIXES, EXPORT_DIR
from alitool.errors import UserError

if TYPE_CHECKING:
    import numpy as np

    from alitool.contract.meta import ModelMeta

FEATURE_KINDS = ("mean", "z", "paper")
# --backend of every command that opens a model: each name and the runtime it means ("onnx" and "trt" are short).
BACKEND_ALIASES = {"auto": "auto", "torch": "torch", "onnxruntime": "onnxruntime", "onnx": "onnxruntime",
                   "tensorrt": "tensorrt", "trt": "tensorrt"}
BACKEND_CHOICES = tuple(BACKEND_ALIASES)


class Backend(Protocol):
    meta: ModelMeta
    name: str
    draws_posterior_samples: bool  # encode(kind="z") draws from q(z|x), rather than returning z_mean

    def encode(self, images: np.ndarray, kind: str = "mean", y: np.ndarray | None = None) -> np.ndarray: ...

    def decode(self, z: np.ndarray, y: np.ndarray | None = None) -> np.ndarray: ...


def check_kind(kind: str) -> None:
    if kind not in FEATURE_KINDS:
        raise UserError(f"unknown feature kind {kind!r}; expected one of {', '.join(FEATURE_KINDS)}")


def check_condition(meta: ModelMeta, y: np.ndarray | None, n: int) -> np.ndarray | None:
    """``y`` as float32 [n, y_dim] for a conditional model (None for an unconditional one), or one clear line."""
    import numpy as np

    if not meta.y_dim:
        if y is not None:
            raise UserError(f"model {meta.name!r} is not conditional: it takes no y (--class / --attrs)")
        return None
    if y is None:
        what = "classes" if meta.y_kind == "class" else "attributes"
        raise UserError(f"model {meta.name!r} is conditional on {meta.y_dim} {what}: give y (--class N or --attrs "
                        f"A,B; the command's --help says how)")
    y = np.ascontiguousarray(y, dtype=np.float32)
    if y.shape != (n, meta.y_dim):
        raise UserError(f"y of shape {tuple(y.shape)}; this model takes [{n}, {meta.y_dim}] for {n} inputs")
    return y


def load_backend(path: str | Path, backend: str = "auto", device: str = "auto", threads: int = 0) -> Backend:
    """Open ``path`` (a run folder, checkpoint .pt, .onnx file or export folder, or TensorRT .engine) with the
    matching backend, or with ``backend`` (one of ``BACKEND_CHOICES``) when given."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: no such model file or folder")
    kind = BACKEND_ALIASES.get(backend, backend)
    kind = kind if kind != "auto" else _guess_backend(path)
    if kind == "torch":
        from alitool.backends.torch_backend import TorchBackend

        return TorchBackend(path, device=device)
    if kind == "onnxruntime":
        from alitool.backends.onnx_backend import OnnxBackend

        return OnnxBackend(path, device=device, threads=threads)
    if kind == "tensorrt":
        from alitool.backends.tensorrt_backend import TensorRTBackend

        return TensorRTBackend(path, device=device)
    raise UserError(f"unknown backend {backend!r}; expected one of {', '.join(BACKEND_CHOICES)}")


def _guess_backend(path: Path) -> str:
    if path.is_dir():
        if (path / EXPORT_DIR).is_dir() and any((path / EXPORT_DIR).glob("*.onnx")):
            return "onnxruntime"
        if any(path.glob("*.onnx")):
            return "onnxruntime"
        return "torch"
    suffix = path.suffix.lower()
    if suffix in (".pt", ".pth"):
        return "torch"
    if suffix == ".onnx":
        return "onnxruntime"
    if suffix in ENGINE_SUFFIXES:
        return "tensorrt"
    raise UserError(f"{path}: not a model file alitool knows (.pt checkpoint, .onnx, .engine, or a run folder)")
