"""A trained checkpoint's inference networks, and the metadata (``ModelMeta``) every artifact made from it carries.

The torch side of the contract: the encoder G_z(x) and decoder G_x(z) (paper section 2) rebuilt from a checkpoint's
config and state dicts, in eval mode, and the ``ModelMeta`` that describes them. Used by the PyTorch backend and by
``alitool export``; export/ reads networks from here, never from the running side's backends.

A checkpoint trained with ``train.ema`` holds the weight average next to the raw networks (``encoder_ema``,
``decoder_ema``; trainers/ema.py): it is what the backend and the export use, unless asked for the raw weights
(``raw_weights=True``, ``alitool export --raw-weights``).
"""

from __future__ import annotations

from pathlib import Path

import torch

from alitool import __version__
from alitool.checkpoint import load_checkpoint
from alitool.config import Config, to_dict
from alitool.contract.meta import ModelMeta
from alitool.errors import UserError
from alitool.models import Decoder, Encoder, feature_dim

EMA_SUFFIX = "_ema"  # trainers/ema.py names the averaged networks "encoder_ema", "decoder_ema"


def meta_from_config(cfg: Config, source_sha256: str = "", weights: str = "") -> ModelMeta:
    m = cfg.model
    names = tuple(m.y_names) if m.conditional else ()
    return ModelMeta(
        name=cfg.name, image_size=cfg.data.image_size, channels=cfg.data.channels,
        latent_dim=m.latent_dim, feature_dim=feature_dim(cfg), config=to_dict(cfg),
        version=__version__, source_sha256=source_sha256,
        y_dim=len(names), y_kind=m.y_kind if names else "", y_names=names, weights=weights,
    )


def network_state(models: dict, name: str, raw_weights: bool = False) -> tuple[dict, str]:
    """(state dict, "ema" | "raw" | "") of network ``name`` in a checkpoint's models: its weight average when the
    run kept one (train.ema) and ``raw_weights`` is not asked for."""
    if name + EMA_SUFFIX in models:
        return (models[name], "raw") if raw_weights else (models[name + EMA_SUFFIX], "ema")
    return models[name], ""


def load_networks_and_weights(checkpoint: str | Path, device: str | torch.device = "cpu",
                              raw_weights: bool = False) -> tuple[Config, Encoder, Decoder, str]:
    """Encoder and decoder of a checkpoint, in eval mode, on ``device``, and which weights they are (see
    ``network_state``)."""
    payload = load_checkpoint(checkpoint, map_location=device)
    cfg = payload["config"]
    missing = [name for name in ("encoder", "decoder") if name not in payload["models"]]
    if missing:  # e.g. a plain GAN run of the 2-D experiment: a decoder only
        raise UserError(f"{checkpoint}: this {payload['extra'].get('game', 'model')} checkpoint has no "
                        f"{' and no '.join(missing)}; encode/decode/export need both")
    encoder, decoder = Encoder(cfg), Decoder(cfg)
    encoder_state, weights = network_state(payload["models"], "encoder", raw_weights)
    encoder.load_state_dict(encoder_state)
    decoder.load_state_dict(network_state(payload["models"], "decoder", raw_weights)[0])
    return cfg, encoder.to(device).eval(), decoder.to(device).eval(), weights


def load_networks(checkpoint: str | Path, device: str | torch.device = "cpu",
                  raw_weights: bool = False) -> tuple[Config, Encoder, Decoder]:
    """Encoder and decoder of a checkpoint (the weight average where the run kept one), in eval mode."""
    return load_networks_and_weights(checkpoint, device, raw_weights)[:3]
