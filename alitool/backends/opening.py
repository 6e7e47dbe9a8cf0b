"""Opening a model the way every command does: ``load_backend`` with one clear line for any file that is not a
usable model (a missing runtime, a file the runtime rejects, an encoder-only file where a decoder is needed), and
the one-line description of what was opened. Printing is left to the command."""

from __future__ import annotations

from pathlib import Path

from alitool.backends import Backend, load_backend
from alitool.errors import UserError, one_line


def open_model(path: str | Path, backend: str = "auto", device: str = "auto", need_decoder: str = "",
               threads: int = 0) -> Backend:
    """Load the model at ``path`` with ``backend`` (one of ``BACKEND_CHOICES``). ``need_decoder`` names the
    command that decodes (``"sample"``), so that an encoder-only file fails before any work, in one line.
    ``threads``: ONNX Runtime's intra-op threads (0: its default); PyTorch's are process-wide, set by the caller."""
    path = Path(path)
    try:
        loaded = load_backend(path, backend=backend, device=device, threads=threads)
    except UserError:
        raise
    except ImportError as err:
        from alitool.install import TRAINING_INSTALL, TRAINING_STACK

        runtime = "" if backend == "auto" else f" with --backend {backend}"
        if (err.name or "").partition(".")[0] in TRAINING_STACK:  # a checkpoint on an inference-only install
            raise UserError(f"{path}: opening it{runtime} needs the training stack (PyTorch), which is not installed: "
                            f"{TRAINING_INSTALL}, or give its ONNX export (alitool export)") from None
        raise UserError(f"{path}: opening it{runtime} needs the '{err.name}' package, which is not installed "
                        "(see alitool doctor)") from None
    except Exception as err:  # noqa: BLE001 - whatever a runtime says about a bad file, say it in one line
        raise UserError(f"{path}: not a usable model ({type(err).__name__}: {one_line(err)})") from None
    if need_decoder:
        from alitool.io.pictures import require_decoder

        require_decoder(loaded, path, need_decoder)
    return loaded


def describe_model(path: str | Path, loaded: Backend) -> str:
    """``model: <path> (<runtime>, <size>, latent <d>[, conditional ...][, weight average])``: what a command
    prints (on stdout) before it uses the model."""
    meta = loaded.meta
    y = f", conditional on {meta.y_dim} {'classes' if meta.y_kind == 'class' else 'attributes'}" if meta.y_dim else ""
    average = ", weight average (train.ema)" if meta.weights == "ema" else ""
    return (f"model: {path} ({loaded.name}, {meta.image_size}x{meta.image_size}x{meta.channels}, latent "
            f"{meta.latent_dim}{y}{average})")
