"""What building (export/tensorrt.py) and running (alitool/backends/tensorrt_backend.py) TensorRT engines both
need: importing TensorRT with a one-line answer when it is missing, its major version, and the CUDA GPU it would
run on. Neutral ground, so that export/ does not import the running side's backends.

Nothing here imports torch at module level; ``cuda_gpu`` asks PyTorch's CUDA runtime (already an alitool
dependency, and what drives the engines' device memory) only when it is called.
"""

from __future__ import annotations

from alitool.errors import UserError, one_line

INSTALL_HINT = ("pip install 'alitool[trt]' (TensorRT for CUDA 13, NVIDIA driver r580+; 'alitool[trt-cu12]' on "
                "CUDA 12)")


class TensorRTUnavailable(UserError):
    """TensorRT is not installed, or there is no CUDA GPU for it."""


def import_tensorrt(ready: str = ""):
    """``import tensorrt``, or one line saying how to install it (``ready``: what is usable meanwhile)."""
    try:
        import tensorrt as trt
    except (ImportError, OSError) as err:  # OSError: the Python bindings without their libnvinfer
        detail = "" if isinstance(err, ModuleNotFoundError) else f" ({one_line(err, 120)})"
        raise TensorRTUnavailable(f"TensorRT is not installed{detail}: {INSTALL_HINT}{ready}") from None
    return trt


def trt_major(version: str) -> int:
    try:
        return int(version.split(".")[0])
    except ValueError:
        raise UserError(f"cannot read the TensorRT version {version!r}") from None


def cuda_gpu(ready: str = "") -> dict[str, str]:
    """Name and compute capability of the current CUDA GPU, or a one-line error saying one is needed."""
    try:
        import torch
    except ImportError:
        raise TensorRTUnavailable(f"TensorRT needs a CUDA GPU and PyTorch with CUDA to drive it{ready}") from None
    if not torch.cuda.is_available():
        raise TensorRTUnavailable(f"TensorRT needs a CUDA GPU; none is usable here{ready}")
    index = torch.cuda.current_device()
    major, minor = torch.cuda.get_device_capability(index)
    return {"gpu_name": torch.cuda.get_device_name(index), "compute_capability": f"{major}.{minor}"}
