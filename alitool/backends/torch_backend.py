"""PyTorch checkpoint backend: the reference the ONNX and TensorRT backends are checked against."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from alitool import __version__
from alitool.backends import ModelMeta, check_kind
from alitool.checkpoint import file_sha256, load_checkpoint
from alitool.config import Config, to_dict
from alitool.errors import UserError
from alitool.models import Decoder, Encoder, feature_dim
from alitool.runs import run_checkpoint


def meta_from_config(cfg: Config, source_sha256: str = "") -> ModelMeta:
    return ModelMeta(
        name=cfg.name, image_size=cfg.data.image_size, channels=cfg.data.channels,
        latent_dim=cfg.model.latent_dim, feature_dim=feature_dim(cfg), config=to_dict(cfg),
        version=__version__, source_sha256=source_sha256,
    )


def load_networks(checkpoint: str | Path, device: str | torch.device = "cpu") -> tuple[Config, Encoder, Decoder]:
    """Encoder and decoder of a checkpoint, in eval mode, on ``device``."""
    payload = load_checkpoint(checkpoint, map_location=device)
    cfg = payload["config"]
    missing = [name for name in ("encoder", "decoder") if name not in payload["models"]]
    if missing:  # e.g. a plain GAN run of the 2-D experiment: a decoder only
        raise UserError(f"{checkpoint}: this {payload['extra'].get('game', 'model')} checkpoint has no "
                        f"{' and no '.join(missing)}; encode/decode/export need both")
    encoder, decoder = Encoder(cfg), Decoder(cfg)
    encoder.load_state_dict(payload["models"]["encoder"])
    decoder.load_state_dict(payload["models"]["decoder"])
    return cfg, encoder.to(device).eval(), decoder.to(device).eval()


class TorchBackend:
    name = "torch"

    def __init__(self, path: str | Path, device: str = "auto"):
        checkpoint = run_checkpoint(path)
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
        self.cfg, self.encoder, self.decoder = load_networks(checkpoint, self.device)
        self.meta = meta_from_config(self.cfg, file_sha256(checkpoint))

    @torch.inference_mode()
    def encode(self, images: np.ndarray, kind: str = "mean") -> np.ndarray:
        check_kind(kind)
        x = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32)).to(self.device)
        if kind == "paper":
            out = self.encoder.features(x)
        elif kind == "z":
            out = self.encoder.sample(x)
        else:
            out = self.encoder(x)[0]
        return out.float().cpu().numpy()

    @torch.inference_mode()
    def decode(self, z: np.ndarray) -> np.ndarray:
        t = torch.from_numpy(np.ascontiguousarray(z, dtype=np.float32)).to(self.device)
        return self.decoder(t).float().cpu().numpy()
