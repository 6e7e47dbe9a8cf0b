"""The model's metadata (``ModelMeta``): what an exported artifact says about the model it holds, so that nothing
has to be retyped downstream. It travels as JSON inside every ONNX file (key ``names.META_KEY``), in every
TensorRT sidecar and, rebuilt from the resolved config, with every checkpoint.

Also the two pieces of arithmetic every stage shares about the model's values: the mapping between [0, 1]
pixels and the model's value range, and the reparametrisation of a Gaussian encoder (paper section 3).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from alitool.errors import UserError


@dataclass(frozen=True)
class ModelMeta:
    """Everything a user would otherwise retype: carried inside every exported artifact."""

    name: str
    image_size: int  # 0 for vector data (2-D toy experiment)
    channels: int
    latent_dim: int
    feature_dim: int
    value_range: tuple[float, float] = (0.0, 1.0)
    config: dict[str, Any] = field(default_factory=dict)  # the resolved training config
    version: str = ""
    source_sha256: str = ""
    has_encoder: bool = True
    has_decoder: bool = True
    # Conditional ALI (section 4.4): y's width, "class" (one-hot) or "attributes" (0/1), and its entries' names.
    y_dim: int = 0
    y_kind: str = ""
    y_names: tuple[str, ...] = ()
    weights: str = ""  # "ema": the weight average of train.ema; "raw": raw weights of such a run; "": no average

    @property
    def input_shape(self) -> tuple[int, ...]:
        return (self.channels, self.image_size, self.image_size) if self.image_size else (self.channels,)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @staticmethod
    def from_json(text: str) -> ModelMeta:
        values = json.loads(text)
        values["value_range"] = tuple(values.get("value_range", (0.0, 1.0)))
        values["y_names"] = tuple(values.get("y_names", ()))
        return ModelMeta(**values)


def meta_from_metadata(values: dict[str, str], where: object) -> ModelMeta:
    """The ModelMeta stored in a file's metadata map (ONNX ``metadata_props``, a TensorRT sidecar)."""
    from alitool.contract.names import META_KEY

    if META_KEY not in values:
        raise UserError(f"{where}: a model file without alitool metadata; export it with `alitool export`")
    try:
        return ModelMeta.from_json(values[META_KEY])
    except (ValueError, TypeError, KeyError) as err:
        raise UserError(f"{where}: unreadable alitool metadata ({err})") from None


def to_model_range(unit: np.ndarray, value_range: tuple[float, float]) -> np.ndarray:
    """Pixels in [0, 1] -> the model's value range (float32). The identity for the default (0, 1), so that
    arrays already in [0, 1] are returned bit for bit."""
    low, high = value_range
    unit = np.asarray(unit, dtype=np.float32)
    if (low, high) == (0.0, 1.0):
        return unit
    return (unit * np.float32(high - low) + np.float32(low)).astype(np.float32, copy=False)


def to_unit_range(values: np.ndarray, value_range: tuple[float, float]) -> np.ndarray:
    """The model's value range -> [0, 1] (float32, clipped): what pictures are drawn from."""
    low, high = value_range
    values = np.asarray(values, dtype=np.float32)
    unit = values if (low, high) == (0.0, 1.0) else (values - np.float32(low)) / np.float32(high - low)
    return np.clip(unit, 0.0, 1.0)


def sample_posterior(z_mean: np.ndarray, z_log_sigma: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A draw of q(z|x) by the reparametrisation trick (paper section 3): z = mu + sigma * eps, one independent
    eps ~ N(0, 1) per latent dimension."""
    eps = rng.standard_normal(z_mean.shape).astype(np.float32)
    return z_mean + np.exp(z_log_sigma) * eps
