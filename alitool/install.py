"""What this install holds: the training stack (extras ``cpu`` / ``gpu``) or only the running side (extras
``edge`` / ``edge-gpu``), which ONNX Runtime distributions, TensorRT and CUDA (``alitool --version`` and
``alitool doctor``).

Nothing here imports torch, ONNX Runtime or TensorRT at module level: whether a package is installed is read from
import specs and package metadata, so that ``alitool --version`` starts in a fraction of a second. Only
``runtime_report(cuda=True)`` (``alitool doctor``) imports torch, to ask it about CUDA.
"""

from __future__ import annotations

import importlib.util

from alitool import __version__
from alitool.errors import UserError

# The modules of the training stack (pyproject.toml's `train` extra, pulled in by `cpu` and `gpu`), each with the
# distribution that installs it.
TRAINING_STACK = {"torch": "torch", "onnx": "onnx", "onnxscript": "onnxscript", "sklearn": "scikit-learn",
                  "scipy": "scipy", "matplotlib": "matplotlib", "yaml": "pyyaml"}
TRAINING_INSTALL = 'pip install "alitool[cpu]" (or "alitool[gpu]" on an NVIDIA GPU)'
# Distributions that all install the one `onnxruntime` module: with two of them, the last installed silently wins.
ONNXRUNTIME_DISTRIBUTIONS = ("onnxruntime", "onnxruntime-gpu", "onnxruntime-directml", "onnxruntime-openvino")


def has_module(name: str) -> bool:
    """``name`` (a top-level module) can be imported here; nothing is imported to find out."""
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def distribution_version(name: str) -> str | None:
    """The installed version of distribution ``name``, or None."""
    from importlib import metadata

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def missing_training_stack() -> list[str]:
    """The distributions of the training stack that are not installed (empty on a `cpu` or `gpu` install)."""
    return [dist for module, dist in TRAINING_STACK.items() if not has_module(module)]


def require_training_stack(what: str) -> None:
    """One line (a UserError: exit code 2) when ``what`` (``"alitool train"``) runs on an install without the
    training stack, e.g. the inference-only ``alitool[edge]``."""
    missing = missing_training_stack()
    if missing:
        which = "PyTorch, not installed here" if "torch" in missing else f"not installed here: {', '.join(missing)}"
        raise UserError(f"{what} needs the training stack ({which}): {TRAINING_INSTALL}")


def onnxruntime_conflict() -> str | None:
    """One line when two ONNX Runtime distributions are installed (``pip install ".[cpu,gpu]"`` does that: no
    packaging rule can forbid it), with the fix; None when there is at most one."""
    found = [(dist, version) for dist in ONNXRUNTIME_DISTRIBUTIONS if (version := distribution_version(dist))]
    if len(found) < 2:
        return None
    names = " and ".join(f"{dist} {version}" for dist, version in found)
    return (f"warning: {names} are both installed and share one onnxruntime module (the last installed wins); keep "
            f"one: pip uninstall -y {' '.join(dist for dist, _ in found)} && pip install onnxruntime-gpu (NVIDIA GPU) "
            "or onnxruntime (CPU)")


def _torch_line(cuda: bool) -> str:
    if not has_module("torch"):
        return f"torch: not installed (running ONNX / TensorRT files only; train, export, eval: {TRAINING_INSTALL})"
    if not cuda:
        return f"torch {distribution_version('torch') or '(version unknown)'} installed (alitool doctor checks CUDA)"
    try:
        import torch
    except Exception as err:  # noqa: BLE001 - a broken torch install is reported, not raised
        return f"torch: installed but fails to import ({type(err).__name__}: {err})"
    state = f"CUDA {torch.version.cuda}, {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else "no CUDA"
    return f"torch {torch.__version__} ({state})"


def _onnxruntime_line() -> str:
    if not has_module("onnxruntime"):
        return "onnxruntime: not installed (pip install 'alitool[edge]', 'alitool[cpu]' or 'alitool[gpu]')"
    try:
        import onnxruntime as ort
    except Exception as err:  # noqa: BLE001
        return f"onnxruntime: installed but fails to import ({type(err).__name__}: {err})"
    return f"onnxruntime {ort.__version__}: providers {', '.join(ort.get_available_providers())}"


def _tensorrt_line(load: bool) -> str:
    if not has_module("tensorrt"):
        return ("tensorrt: not installed (on an NVIDIA GPU: pip install 'alitool[trt]' for CUDA 13, driver r580+; "
                "'alitool[trt-cu12]' for CUDA 12)")
    if not load:
        return f"tensorrt {distribution_version('tensorrt') or '(version unknown)'} installed (alitool doctor loads it)"
    try:
        import tensorrt as trt
    except Exception as err:  # noqa: BLE001
        return f"tensorrt: installed but fails to load ({type(err).__name__}: {err})"
    return f"tensorrt {trt.__version__}"


def runtime_report(cuda: bool = False) -> str:
    """Which inference runtimes are usable here: ONNX Runtime providers, TensorRT, torch. ``cuda`` (``alitool
    doctor``) also imports torch and TensorRT to ask about CUDA; without it (``--version``) neither is imported."""
    lines = [f"alitool {__version__}", _torch_line(cuda), _onnxruntime_line()]
    conflict = onnxruntime_conflict()
    if conflict:
        lines.append(conflict)
    lines.append(_tensorrt_line(cuda))
    return "\n".join(lines)
