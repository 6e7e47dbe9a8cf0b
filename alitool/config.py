"""The configuration schema: frozen dataclasses, overridden by YAML files and ``--set key=value``.

The dataclasses are the schema. A YAML file (``configs/<name>.yaml``) only overrides fields, and a
``--set model.latent_dim=32`` overrides them once more, type-checked. An unknown key fails with a
close-match hint, and so does a value outside a key's choices (``choice`` below): every enumerated key is checked
when the config is built, so a typo fails before a run folder exists, never silently or in the middle of a run.
Nothing in a config is ever evaluated as code.

Network architectures are *layer tables*: each row is one line of the paper's Appendix A tables
(Dumoulin et al. 2017, tables 3-6), ``[op, kernel, stride, channels, batch_norm, dropout, activation]``.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import re
import types
import typing
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from alitool.errors import UserError, one_line

CONFIG_DIR = Path(__file__).resolve().parent / "configs"
if not CONFIG_DIR.is_dir():  # editable install / source checkout: configs/ sits next to alitool/
    CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"

LAYER_OPS = ("conv", "deconv", "linear")
ACTIVATIONS = ("lrelu", "relu", "linear", "sigmoid", "maxout", "tanh")
# train.device: what the training loop hands to torch.device (trainers/loop.py, pick_device).
DEVICE_PATTERN = r"auto|cpu|cuda(:\d+)?"


# The largest seed every generator we seed accepts (NumPy's legacy np.random.seed: [0, 2**32 - 1]).
SEED_MAX = 2**32 - 1


def bounded(default: Any, min: float | None = None, max: float | None = None, min_open: bool = False,
            max_open: bool = False) -> Any:
    """A number field whose value must lie in [min, max] (``min_open`` / ``max_open``: excluded); checked when a
    config is built, like ``choice``. Every float field must also be finite, bounded or not."""
    return field(default=default, metadata={"min": min, "max": max, "min_open": min_open, "max_open": max_open})


def choice(default: str, choices: tuple[str, ...] = (), pattern: str = "", expected: str = "") -> Any:
    """A string field whose value must be one of ``choices`` (or fully match the regex ``pattern``, described to
    the user as ``expected``). ``_build`` and ``with_train`` check it whenever a config is built, so the code that
    reads the key can rely on the value and never checks it again."""
    return field(default=default, metadata={"choices": choices, "pattern": pattern, "expected": expected})


@dataclass(frozen=True)
class Layer:
    """One row of a paper architecture table.

    ``channels`` is the layer's output width *before* maxout: a maxout activation with ``pieces`` pieces
    divides it (the paper's CIFAR10 table lists the widths before maxout). ``dropout`` is applied to the
    layer's *input*, as in the official code.
    """

    op: str
    kernel: int
    stride: int
    channels: int
    batch_norm: bool = False
    dropout: float = 0.0
    activation: str = "lrelu"

    @staticmethod
    def from_row(row: Any, where: str) -> Layer:
        if isinstance(row, Layer):
            return row
        if isinstance(row, dict):
            row = [row.get(f.name, f.default) for f in fields(Layer)]
        if not isinstance(row, (list, tuple)) or not 4 <= len(row) <= 7:
            raise UserError(
                f"{where}: a layer row is [op, kernel, stride, channels, batch_norm, dropout, activation], got {row!r}"
            )
        layer = Layer(*row)
        for name in ("kernel", "stride", "channels"):  # a linear row's kernel and stride are unused (0)
            value, least = getattr(layer, name), 0 if layer.op == "linear" and name != "channels" else 1
            if not isinstance(value, int) or isinstance(value, bool) or value < least:
                raise UserError(f"{where}: {name} must be a whole number >= {least}, got {value!r}")
        if not isinstance(layer.batch_norm, bool):
            raise UserError(f"{where}: batch_norm must be true or false, got {layer.batch_norm!r}")
        dropout = layer.dropout
        if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0 <= dropout < 1:
            raise UserError(f"{where}: dropout must be a number in [0, 1), got {dropout!r}")
        if layer.op not in LAYER_OPS:
            raise UserError(f"{where}: unknown layer op {layer.op!r}; expected one of {', '.join(LAYER_OPS)}")
        if layer.activation not in ACTIVATIONS:
            raise UserError(
                f"{where}: unknown activation {layer.activation!r}; expected one of {', '.join(ACTIVATIONS)}"
            )
        return layer


@dataclass(frozen=True)
class ModelConfig:
    """Encoder G_z(x), decoder G_x(z) and discriminator D(x, z) (paper section 2, Appendix A)."""

    latent_dim: int = bounded(16, min=1, max=1_000_000)
    leaky_slope: float = bounded(0.01, min=0, max=1)
    maxout_pieces: int = bounded(2, min=1, max=64)
    # The encoder's last layer outputs 2 * latent_dim channels = (mu, log_sigma) and z is sampled with the
    # reparametrisation trick (paper section 3). "deterministic" makes it output mu only (BiGAN).
    encoder_output: str = choice("gaussian", ("gaussian", "deterministic"))
    batch_norm_momentum: float = bounded(0.05, min=0, max=1)  # official code
    init_std: float = bounded(0.01, min=0)  # N(0, 0.01) weights, zero biases (official code); 0: PyTorch's default init
    # The 2-D experiment's encoder input (paper section 4.5): x concatenated with this many N(0, 1) noise values.
    encoder_noise_dim: int = bounded(0, min=0, max=1_000_000)
    # BigBiGAN's unary scores: D also scores x alone and z alone, and each score gets the loss (docs/mixture.md).
    disc_unary: bool = False
    # Whether D(z)'s rows without batch norm carry a bias. The official SVHN, CIFAR10 and CelebA scripts build
    # D(z) without any (their configs set false); its Tiny ImageNet script keeps them. True is also what a saved
    # config without this key was trained with, so old checkpoints rebuild the same D.
    disc_z_bias: bool = True
    # Spectral normalisation (Miyato et al. 2018) of every D weight, conv and linear (docs/switches.md).
    spectral_norm: bool = False
    # Conditional ALI (paper section 4.4, Eq. 7; docs/conditional.md): y is linearly embedded to y_embed_dim
    # (256 in the official code) and fed to G_z, G_x and D. y_kind ("class": one-hot; "attributes": 0/1) and
    # y_names (class or attribute names) are filled in from the dataset at training time; they say what y means.
    conditional: bool = False
    y_embed_dim: int = bounded(256, min=1, max=1_000_000)
    y_kind: str = choice("", ("", "class", "attributes"))
    y_names: tuple[str, ...] = ()
    encoder: tuple[Layer, ...] = ()
    decoder: tuple[Layer, ...] = ()
    disc_x: tuple[Layer, ...] = ()
    disc_z: tuple[Layer, ...] = ()
    disc_xz: tuple[Layer, ...] = ()


@dataclass(frozen=True)
class DataConfig:
    name: str = "digits"
    image_size: int = bounded(8, min=0, max=8192)  # 0: vector data (the 2-D experiment)
    channels: int = bounded(1, min=1, max=4096)
    data_dir: str = ""  # empty: the dataset's default location
    # How an image file of another shape becomes image_size x image_size: "center" cuts the central square, then
    # resizes it; "stretch" resizes the whole image (alitool.contract.preprocess, Preprocess).
    crop: str = choice("center", ("center", "stretch"))
    # Number of training images used to initialise the decoder's output bias to the log-odds of the mean
    # pixel (official code); 0 disables it.
    bias_init_images: int = bounded(10000, min=0)


@dataclass(frozen=True)
class SemiSupervisedConfig:
    """The K+1 semi-supervised game (paper section 4.3; Salimans et al. 2016). ``labels`` > 0 switches it on:
    that many examples of ``labelled_split`` keep their labels (balanced over ``classes``, drawn with train.seed),
    unlabelled training runs on the training split, and D(x, z)'s last row outputs ``classes`` + 1 logits
    (trainers/semi.py)."""

    labels: int = bounded(0, min=0)  # 0: the plain ALI game
    classes: int = bounded(10, min=1, max=1_000_000)  # K
    labelled_batch_size: int = bounded(0, min=0)  # labelled pairs per step; 0: train.batch_size
    # The split the labelled examples come from. "": the dataset's choice, which for svhn is val (train_32x32.mat,
    # the 73k set the paper's baselines draw their labels from) and for every other dataset the training split.
    labelled_split: str = choice("", ("",), pattern=r"[a-z][a-z0-9_-]*",
                                 expected="empty (the dataset's choice) or a split name such as train, val, extra")


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = bounded(100, min=1)
    batch_size: int = bounded(100, min=1)  # and within memory (check_fits_memory)
    lr: float = bounded(1e-4, min=0, min_open=True)
    beta1: float = bounded(0.5, min=0, max=1, max_open=True)
    # the paper's "1e-3" is 1 - beta2: Blocks, the official code's library, takes it that way
    beta2: float = bounded(0.999, min=0, max=1, max_open=True)
    seed: int = bounded(0, min=0, max=SEED_MAX)
    device: str = choice("auto", pattern=DEVICE_PATTERN, expected="auto, cpu, cuda or cuda:N")
    max_steps: int = bounded(0, min=0)  # 0: no limit (stop after `epochs`)
    checkpoint_every_steps: int = bounded(0, min=0)  # 0: once per epoch (and at the end) ...
    checkpoint_every_minutes: float = bounded(5.0, min=0)  # ... and at least this often, so a kill loses little work
    sample_grid: int = bounded(64, min=1, max=4096)  # images in each epoch's sample / reconstruction grid
    # "simultaneous": one forward graph, D and G/E step together (official code); "alternating": D steps first,
    # then G/E play against the updated D (docs/mixture.md measures the difference).
    update: str = choice("simultaneous", ("simultaneous", "alternating"))
    lr_schedule: str = choice("constant", ("constant", "linear"))  # linear: decays to 0 at the last step
    # Speed switches (benchmarks/train_step.py measures them). "auto": bf16 autocast on CUDA GPUs that support
    # it and, for image models, on CPUs with native bf16 (AVX-512 BF16 / AMX); fp32 elsewhere and for vector data
    # (trainers/speed.py says why; benchmarks/RESULTS.md has the speed and training-quality measurements).
    precision: str = choice("auto", ("auto", "fp32", "bf16"))
    channels_last: bool = False  # NHWC memory format for the conv nets
    compile: bool = False  # torch.compile the three networks
    # How plain CPU convolutions run in the training step (alitool/conv_autotune.py): "auto" times oneDNN, oneDNN
    # in the other memory order and the im2col products once per layer shape on this machine (kept on disk) and
    # takes the fastest; "onednn" never anything else; "products" the products wherever they apply; "rule" the
    # fixed bf16 small-map rule of earlier releases (alitool/conv_gemm.py, pays_off), to reproduce their figures.
    conv_path: str = choice("auto", ("auto", "onednn", "products", "rule"))
    # Beyond the paper, each off by default (docs/switches.md):
    # bce: the paper's softplus form; hinge: the hinge loss of BigBiGAN (Donahue & Simonyan 2019)
    loss: str = choice("bce", ("bce", "hinge"))
    alice: float = bounded(0.0, min=0)  # ALICE cycle term weight lambda (Li et al. 2017); 0: off
    alice_norm: str = choice("l1", ("l1", "l2"))  # the distance of the ALICE reconstructions of x and z
    ema: float = bounded(0.0, min=0, max=1, max_open=True)  # decay of an EMA of G_z and G_x (e.g. 0.999); 0: off
    semi_supervised: SemiSupervisedConfig = field(default_factory=SemiSupervisedConfig)


@dataclass(frozen=True)
class Config:
    name: str = "digits"
    description: str = ""
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


# ----------------------------------------------------------------------------------------------------------
# Building a Config from nested dicts, with type checks and close-match hints.


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against the annotation ``tp`` and convert where that is lossless (int -> float)."""
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise UserError(f"config key {key!r} is a section; expected a mapping, got {value!r}")
        return _build(tp, value, key + ".")
    if origin is tuple and typing.get_args(tp) == (str, ...):  # a list of names (model.y_names)
        if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
            raise UserError(f"config key {key!r} expects a list of strings, got {value!r}")
        return tuple(value)
    if origin is tuple and typing.get_args(tp)[:1] == (Layer,):
        if not isinstance(value, (list, tuple)):
            raise UserError(f"config key {key!r} is a layer table; expected a list of rows, got {value!r}")
        return tuple(Layer.from_row(row, f"{key}[{i}]") for i, row in enumerate(value))
    if origin in (typing.Union, types.UnionType):
        for option in typing.get_args(tp):
            try:
                return _coerce(value, option, key)
            except UserError:
                continue
        raise UserError(f"config key {key!r} expects {tp}, got {value!r}")
    if tp is type(None):
        if value is None:
            return None
        raise UserError(f"config key {key!r} expects null, got {value!r}")
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif tp is str:
        if isinstance(value, str):
            return value
    else:
        return value
    raise UserError(f"config key {key!r} expects {_type_name(tp)}, got {value!r}")


def _build(cls: type, values: dict, prefix: str = "") -> Any:
    return cls(**_checked(cls, values, prefix))


def _checked(cls: type, values: dict, prefix: str) -> dict[str, Any]:
    """``values`` for the fields of ``cls``: known keys only, each of its type and, for a ``choice`` field, one of
    its choices."""
    hints = typing.get_type_hints(cls)
    known = {f.name: f for f in fields(cls)}
    kwargs = {}
    for key, value in values.items():
        if key not in known:
            raise UserError(_unknown_key_message(prefix + str(key), [prefix + n for n in known]))
        kwargs[key] = _coerce(value, hints[key], prefix + key)
        _check_choice(known[key], kwargs[key], prefix + key)
        _check_bounds(known[key], kwargs[key], prefix + key)
    return kwargs


def _check_bounds(f: dataclasses.Field, value: Any, key: str) -> None:
    """A ``bounded`` field's range, and finiteness for every float."""
    if isinstance(value, float) and not math.isfinite(value):
        raise UserError(f"config key {key!r} is {value}; expected a finite number")
    low, high = f.metadata.get("min"), f.metadata.get("max")
    if not isinstance(value, (int, float)) or isinstance(value, bool) or (low is None and high is None):
        return
    below = low is not None and (value <= low if f.metadata.get("min_open") else value < low)
    above = high is not None and (value >= high if f.metadata.get("max_open") else value > high)
    if below or above:
        raise UserError(f"config key {key!r} is {value}; expected {_range_words(f)}")


def _range_words(f: dataclasses.Field) -> str:
    low, high = (_num(f.metadata.get(k)) for k in ("min", "max"))
    if high is None:
        return f"a number {'>' if f.metadata.get('min_open') else '>='} {low}"
    if low is None:
        return f"a number {'<' if f.metadata.get('max_open') else '<='} {high}"
    return (f"a number in {'(' if f.metadata.get('min_open') else '['}{low}, {high}"
            f"{')' if f.metadata.get('max_open') else ']'}")


def _num(x: Any) -> Any:
    return None if x is None else str(x) if isinstance(x, int) else f"{x:g}"


# ----------------------------------------------------------------------------------------------------------
# Memory: counts that scale an allocation (a batch, a grid) are checked against the memory available.

# A training batch holds its images many times over (activations of three networks, gradients): a floor, so that
# a batch that cannot possibly fit fails at once with one line instead of a MemoryError.
BATCH_ACTIVATION_FACTOR = 16


def available_memory_bytes() -> int:
    """Memory available to a new allocation: /proc/meminfo's MemAvailable, else free pages (os.sysconf), else
    16 GiB when neither can be read."""
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, OSError, ValueError):
        return 16 * 2**30


def check_memory(what: str, count: int, bytes_each: int, available: int | None = None) -> None:
    """UserError (one line) when ``count`` items of ``bytes_each`` bytes exceed the memory available."""
    available = available_memory_bytes() if available is None else available
    need = count * bytes_each
    if need > available:
        raise UserError(f"{what} {count} would need at least {need / 2**30:.1f} GiB of memory, more than the "
                        f"{available / 2**30:.1f} GiB available; use a smaller value")


def check_fits_memory(cfg: Config) -> Config:
    """``cfg`` when one training batch (train.batch_size images of data.channels x data.image_size^2 float32,
    times ``BATCH_ACTIVATION_FACTOR``) can fit in the memory available, else UserError."""
    pixels = cfg.data.channels * max(1, cfg.data.image_size) ** 2
    check_memory("train.batch_size", cfg.train.batch_size, pixels * 4 * BATCH_ACTIVATION_FACTOR)
    return cfg


def _check_choice(f: dataclasses.Field, value: Any, key: str) -> None:
    choices, pattern = f.metadata.get("choices", ()), f.metadata.get("pattern", "")
    if value in choices or (pattern and re.fullmatch(pattern, value)) or not (choices or pattern):
        return
    expected = f.metadata.get("expected") or _or_list([repr(c) if c == "" else c for c in choices])
    close = difflib.get_close_matches(value, [c for c in choices if c], n=1, cutoff=0.5)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    raise UserError(f"config key {key!r} is {value!r}; expected {expected}{hint}")


def _or_list(items: list[str]) -> str:
    return items[0] if len(items) == 1 else f"{', '.join(items[:-1])} or {items[-1]}"


def _unknown_key_message(key: str, known: list[str]) -> str:
    close = difflib.get_close_matches(key, known, n=1, cutoff=0.5)
    hint = f"; did you mean {close[0]!r}?" if close else f"; known keys: {', '.join(known)}"
    return f"unknown config key {key!r}{hint}"


def to_dict(cfg: Any) -> Any:
    """Plain dicts and lists (layer rows as lists), ready for YAML or JSON."""
    if isinstance(cfg, Layer):
        return [getattr(cfg, f.name) for f in fields(Layer)]
    if dataclasses.is_dataclass(cfg):
        return {f.name: to_dict(getattr(cfg, f.name)) for f in fields(cfg)}
    if isinstance(cfg, (list, tuple)):
        return [to_dict(v) for v in cfg]
    return cfg


def from_dict(values: dict) -> Config:
    return check_fits_memory(_build(Config, values))


def _deep_merge(base: dict, override: dict) -> dict:
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


# ----------------------------------------------------------------------------------------------------------
# Loading: a config name or a YAML path, then --set overrides.


def available_configs() -> list[str]:
    return sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))


def resolve_config_path(name_or_path: str) -> Path:
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml"):
        if not path.is_file():
            raise UserError(f"{path}: config file not found")
        return path
    stem = name_or_path.replace("-", "_")
    candidate = CONFIG_DIR / f"{stem}.yaml"
    if candidate.is_file():
        return candidate
    known = available_configs()
    close = difflib.get_close_matches(stem, known, n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    raise UserError(f"unknown config {name_or_path!r}: {hint}available: {', '.join(known)} (or a path to a .yaml)")


def read_yaml(path: Path) -> dict:
    import yaml  # PyYAML is in the training stack; the running side never reads YAML

    try:
        values = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
        raise UserError(f"{path}: cannot read config: {one_line(err)}") from None
    if not isinstance(values, dict):
        raise UserError(f"{path}: a config file must be a mapping at the top level")
    return values


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"train.lr=2e-4"`` -> (["train", "lr"], 0.0002). The value is read as a YAML scalar, never as code."""
    import yaml

    if "=" not in text:
        raise UserError(f"--set {text!r}: expected key=value, e.g. --set train.lr=2e-4")
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    if isinstance(value, str) and _looks_like_float(raw):  # YAML 1.1 reads "2e-4" as a string
        value = float(raw)
    return key.strip().split("."), value


def _looks_like_float(raw: str) -> bool:
    try:
        float(raw)
    except ValueError:
        return False
    return True


def apply_overrides(values: dict, overrides: list[str]) -> dict:
    for text in overrides:
        keys, value = parse_override(text)
        patch: Any = value
        for key in reversed(keys):
            patch = {key: patch}
        values = _deep_merge(values, patch)
    return values


def read_config_values(path: Path, seen: tuple[Path, ...] = ()) -> dict:
    """A config file's values, on top of the config its ``base:`` key names (a config name or a .yaml path),
    so that a variant (mnist.yaml on fashion_mnist.yaml) states only what differs."""
    values = read_yaml(path)
    base = values.pop("base", None)
    if base is None:
        return values
    if not isinstance(base, str) or not base:
        raise UserError(f"{path}: base must be a config name or a .yaml path, got {base!r}")
    base_path = resolve_config_path(base)
    if base_path.resolve() in seen + (path.resolve(),):
        raise UserError(f"{path}: base {base!r} leads back to itself")
    return _deep_merge(read_config_values(base_path, seen + (path.resolve(),)), values)


def load_config(name_or_path: str = "digits", overrides: list[str] | tuple[str, ...] = ()) -> Config:
    path = resolve_config_path(name_or_path)
    values = read_config_values(path)
    values.setdefault("name", path.stem.replace("_", "-"))
    return from_dict(apply_overrides(values, list(overrides)))


def with_train(cfg: Config, **changes: Any) -> Config:
    """Return ``cfg`` with train fields replaced (CLI flags such as --epochs, --device), checked as ``--set`` is."""
    return check_fits_memory(replace(cfg, train=replace(cfg.train, **_checked(TrainConfig, changes, "train."))))


def dump_yaml(cfg: Config) -> str:
    import yaml

    return yaml.safe_dump(to_dict(cfg), sort_keys=False, default_flow_style=None, width=120)
