"""The model's metadata (``ModelMeta``): what an exported artifact says about the model it holds, so that nothing
has to be retyped downstream. It travels as JSON inside every ONNX file (key ``names.META_KEY``), in every
TensorRT sidecar and, rebuilt from the resolved config, with every checkpoint.

Also the two pieces of arithmetic every stage shares about the model's values: the mapping between [0, 1]
pixels and the model's value range, and the reparametrisation of a Gaussian encoder (paper section 3).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields
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
        """The metadata of a file, checked as user input is (a file can be edited): ValueError naming the first
        entry of the wrong type or out of range."""
        values = json.loads(text)
        if not isinstance(values, dict):
            raise ValueError("the metadata is not a JSON object")
        unknown = sorted(set(values) - {f.name for f in fields(ModelMeta)})
        if unknown:
            raise ValueError(f"unknown entries {', '.join(map(repr, unknown))}")
        for key in ("name", "image_size", "channels", "latent_dim", "feature_dim"):
            if key not in values:
                raise ValueError(f"{key} is missing")
        _check_int(values, "image_size", 0, 8192)
        _check_int(values, "channels", 1, 4096)
        _check_int(values, "latent_dim", 1, 1_000_000)
        _check_int(values, "feature_dim", 1, 100_000_000)
        _check_int(values, "y_dim", 0, 1_000_000)
        for key in ("name", "version", "source_sha256", "y_kind", "weights"):
            if key in values and not isinstance(values[key], str):
                raise ValueError(f"{key} must be a string, not {values[key]!r:.40}")
        for key in ("has_encoder", "has_decoder"):
            if key in values and not isinstance(values[key], bool):
                raise ValueError(f"{key} must be true or false, not {values[key]!r:.40}")
        if not isinstance(values.get("config", {}), dict):
            raise ValueError("config must be a JSON object")
        if values.get("y_kind", "") not in ("", "class", "attributes"):
            raise ValueError(f"y_kind must be '', 'class' or 'attributes', not {values['y_kind']!r:.40}")
        names = values.get("y_names", [])
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise ValueError("y_names must be a list of strings")
        values["y_names"] = tuple(names)
        values["value_range"] = _value_range(values.get("value_range", [0.0, 1.0]))
        _check_against_config(values)
        return ModelMeta(**values)


def _check_int(values: dict, key: str, low: int, high: int) -> None:
    value = values.get(key, low)
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise ValueError(f"{key} must be a whole number in [{low}, {high}], not {value!r:.40}")


def _check_against_config(values: dict) -> None:
    """The entries that repeat the training config (``config``, when the file has one) must agree with it; an
    image model trained by alitool sees pixels in [0, 1] (the training loader's k / 255)."""
    config = values.get("config") or {}
    data, model = config.get("data"), config.get("model")
    if isinstance(data, dict):
        for key in ("image_size", "channels"):
            if key in data and data[key] != values[key]:
                raise ValueError(f"{key} is {values[key]} but the training config says {data[key]!r:.40}")
        if values["image_size"] and values["value_range"] != (0.0, 1.0):
            raise ValueError(f"value_range is {list(values['value_range'])} but the training config's images are "
                             "pixels in [0, 1]")
    if isinstance(model, dict) and "latent_dim" in model and model["latent_dim"] != values["latent_dim"]:
        raise ValueError(f"latent_dim is {values['latent_dim']} but the training config says "
                         f"{model['latent_dim']!r:.40}")


def _value_range(value: Any) -> tuple[float, float]:
    """Two finite numbers, low < high."""
    ok = (isinstance(value, (list, tuple)) and len(value) == 2
          and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in value))
    if not ok or not value[0] < value[1]:
        raise ValueError(f"value_range must be two finite numbers [low, high] with low < high, not {value!r:.60}")
    return float(value[0]), float(value[1])


def meta_from_metadata(values: dict[str, str], where: object) -> ModelMeta:
    """The ModelMeta stored in a file's metadata map (ONNX ``metadata_props``, a TensorRT sidecar)."""
    from alitool.contract.names import META_KEY

    if META_KEY not in values:
        raise UserError(f"{where}: a model file without alitool metadata; export it with `alitool export`")
    try:
        return ModelMeta.from_json(values[META_KEY])
    except (ValueError, TypeError, KeyError, RecursionError) as err:
        raise UserError(f"{where}: unreadable alitool metadata ({' '.join(str(err).split())[:200]})") from None


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
