"""PyTorch checkpoint backend: the reference the ONNX and TensorRT backends are checked against.

The networks and their metadata come from ``alitool.trained_networks`` (the weight average of a ``train.ema`` run
unless ``raw_weights``), exactly as ``alitool export`` reads them.

Threads: the backend leaves PyTorch's intra-op thread count alone (one per physical core, or ``OMP_NUM_THREADS``):
the count is process-wide, so a library object must not change it behind its caller's back. ``alitool encode
--threads N`` sets it for the command's process. On a shared machine PyTorch's default pool collapsed at batch 1
(3 img/s against 45 with one thread, benchmarks/RESULTS.md); on an idle one no better default has been measured.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import torch

from alitool.backends import check_condition, check_kind
from alitool.checkpoint import file_sha256
from alitool.errors import UserError
from alitool.models import NoiseInput
from alitool.runs import run_checkpoint
from alitool.trained_networks import load_networks_and_weights, meta_from_config


def torch_device(device: str) -> torch.device:
    """``--device`` as a torch device, checked before any weights are loaded: "auto" is CUDA when usable, else the
    CPU; "cuda" / "cuda:N" without a usable CUDA device (or without GPU N) is one line saying so, instead of the
    checkpoint loader's "corrupt or truncated"."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    match = re.fullmatch(r"cuda(?::(\d+))?", device)
    if device != "cpu" and not match:
        try:  # another accelerator torch knows (mps, xpu, ...)
            return torch.device(device)
        except (RuntimeError, ValueError):
            raise UserError(f"--device {device!r}: the PyTorch backend takes auto, cpu, cuda or cuda:N (N the GPU "
                            "index)") from None
    if match:
        if not torch.cuda.is_available():
            build = "a CPU-only build" if torch.version.cuda is None else f"built for CUDA {torch.version.cuda}"
            raise UserError(f"--device {device}: no CUDA device is usable here (torch {torch.__version__}, {build}, "
                            "found no GPU); use --device cpu or auto")
        count = torch.cuda.device_count()
        if match.group(1) is not None and int(match.group(1)) >= count:
            raise UserError(f"--device {device}: this machine has {count} CUDA device(s), numbered from 0")
    return torch.device(device)


class TorchBackend:
    name = "torch"

    def __init__(self, path: str | Path, device: str = "auto", raw_weights: bool = False):
        checkpoint = run_checkpoint(path)
        self.device = torch_device(device)
        self.cfg, self.encoder, self.decoder, weights = load_networks_and_weights(checkpoint, self.device, raw_weights)
        self.meta = meta_from_config(self.cfg, file_sha256(checkpoint), weights)

    @property
    def draws_posterior_samples(self) -> bool:
        """Whether ``encode(kind="z")`` draws from q(z|x) rather than returning z_mean: a Gaussian encoder draws eps
        (paper section 3), an encoder with noise inputs (section 4.5) draws its noise."""
        return self.encoder.stochastic or isinstance(self.encoder.stack, NoiseInput)

    def _y(self, y: np.ndarray | None, n: int) -> torch.Tensor | None:
        y = check_condition(self.meta, y, n)
        return None if y is None else torch.from_numpy(y).to(self.device)

    @torch.inference_mode()
    def encode(self, images: np.ndarray, kind: str = "mean", y: np.ndarray | None = None) -> np.ndarray:
        check_kind(kind)
        x = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32)).to(self.device)
        cond = self._y(y, len(x))
        if kind == "paper":
            out = self.encoder.features(x, cond)
        elif kind == "z":
            out = self.encoder.sample(x, cond)
        else:
            out = self.encoder(x, cond)[0]
        return out.float().cpu().numpy()

    @torch.inference_mode()
    def decode(self, z: np.ndarray, y: np.ndarray | None = None) -> np.ndarray:
        t = torch.from_numpy(np.ascontiguousarray(z, dtype=np.float32)).to(self.device)
        return self.decoder(t, self._y(y, len(t))).float().cpu().numpy()
