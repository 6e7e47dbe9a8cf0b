"""PyTorch checkpoint backend: the reference the ONNX and TensorRT backends are checked against.

The networks and their metadata come from ``alitool.trained_networks`` (the weight average of a ``train.ema`` run
unless ``raw_weights``), exactly as ``alitool export`` reads them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from alitool.backends import check_condition, check_kind
from alitool.checkpoint import file_sha256
from alitool.runs import run_checkpoint
from alitool.trained_networks import load_networks_and_weights, meta_from_config


class TorchBackend:
    name = "torch"

    def __init__(self, path: str | Path, device: str = "auto", raw_weights: bool = False):
        checkpoint = run_checkpoint(path)
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
        self.cfg, self.encoder, self.decoder, weights = load_networks_and_weights(checkpoint, self.device, raw_weights)
        self.meta = meta_from_config(self.cfg, file_sha256(checkpoint), weights)

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
