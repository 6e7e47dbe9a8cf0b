"""ONNX export of ALI's two inference networks (Dumoulin et al. 2017, section 2), metadata inside.

- ``encoder.onnx``: G_z(x). Input ``images`` float32 [N, C, H, W] in the value range (vectors [N, D] for the
  2-D toy experiment); outputs ``z_mean`` [N, latent], ``z_log_sigma`` [N, latent] (Gaussian encoders; a sample
  is z_mean + exp(z_log_sigma) * eps, section 3) and ``features`` [N, F], the section 4.3 SVM feature vector
  (the encoder output plus its last three hidden layers, as ``Encoder.features`` computes it).
- ``decoder.onnx``: G_x(z). Input ``z`` [N, latent]; output ``images``.
- A conditional model (section 4.4, Eq. 7) takes y as a second input ``y``, float32 [N, y_dim], in both files;
  the metadata says what y means (``y_kind``, ``y_names``).

The batch axis is dynamic. Every file carries the model's ``ModelMeta`` as JSON under the key ``alitool`` plus
readable keys (image size, channels, value range, latent dim, outputs, precision, version, source hash), so a
user never retypes anything downstream; an image model's files also spell out the one preprocessing rule
(``alitool.preprocess.*``, from ``Preprocess.describe``) and carry the contract's version as ``model_version``.
A model is exported to memory, checked against PyTorch on fresh inputs at a batch size different from the export
example, and only then written (atomically).
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import Tensor, nn

from alitool.atomic import atomic_write_bytes
from alitool.contract.meta import ModelMeta, meta_from_metadata
from alitool.contract.names import (
    DECODER_ONNX,
    ENCODER_ONNX,
    FEATURES,
    GRAPH_KEY,
    IMAGES,
    META_KEY,
    PRECISION_KEY,
    Z_LOG_SIGMA,
    Z_MEAN,
    Y,
    Z,
)
from alitool.contract.preprocess import CONTRACT_VERSION, Preprocess
from alitool.errors import UserError, one_line
from alitool.export.fold import fold_batch_norm

OPSET = 18
# dynamo specialises a batch of 1 to a constant; 3 also differs from the parity batch, so a file that only
# works at its example batch fails the check below.
EXPORT_BATCH = 3
PARITY_BATCH = 5
EXPORTERS = ("dynamo", "torchscript")
# PyTorch's own ONNX tests use rtol 1e-3, atol 1e-4.
RTOL, ATOL = 1e-3, 1e-4
MAX_PROTO_BYTES = 2**31 - 1  # protobuf's limit for one file without external data


class EncoderGraph(nn.Module):
    """The encoder with all three outputs from one pass through its layer table."""

    def __init__(self, encoder: nn.Module):
        super().__init__()
        self.encoder = encoder

    def forward(self, images: Tensor, y: Tensor | None = None) -> tuple[Tensor, ...]:
        taps: list[Tensor] = []
        embedding = None if y is None else self.encoder.embed(y)
        out = self.encoder.stack(images, taps, extra=embedding).flatten(1)
        # Same slices as Encoder.features (last four rows) and Encoder.forward (chunk of the output);
        # the parity check compares against those methods, so a change there cannot go unnoticed.
        features = torch.cat([t.flatten(1) for t in taps[-4:]], dim=1)
        if not self.encoder.stochastic:
            return out, features
        z_mean, z_log_sigma = out.chunk(2, dim=1)
        return z_mean, z_log_sigma, features


def encoder_output_names(encoder: nn.Module) -> list[str]:
    return [Z_MEAN, Z_LOG_SIGMA, FEATURES] if encoder.stochastic else [Z_MEAN, FEATURES]


def reference_encoder_outputs(encoder: nn.Module, images: Tensor, y: Tensor | None = None) -> list[Tensor]:
    """What PyTorch itself says, through the Encoder's own methods (not through EncoderGraph)."""
    cond = () if y is None else (y,)  # an unconditional encoder's methods take x alone
    with torch.no_grad():
        z_mean, z_log_sigma = encoder(images, *cond)
        features = encoder.features(images, *cond)
    return [z_mean, features] if z_log_sigma is None else [z_mean, z_log_sigma, features]


def to_onnx(module: nn.Module, example: Tensor | tuple[Tensor, ...], input_name: str | list[str],
            output_names: list[str], exporter: str = "dynamo", opset: int = OPSET) -> onnx.ModelProto:
    """Trace ``module`` (eval mode) into an ONNX model with a dynamic batch axis, shared by all its inputs (one
    example tensor and name, or a tuple and a list: a conditional model's (images or z, y))."""
    if exporter not in EXPORTERS:
        raise UserError(f"unknown ONNX exporter {exporter!r}; expected one of {', '.join(EXPORTERS)}")
    examples = example if isinstance(example, tuple) else (example,)
    input_names = input_name if isinstance(input_name, list) else [input_name]
    module = module.eval()
    with torch.no_grad():
        shapes = [tuple(t.shape[1:]) for t in _as_tuple(module(*examples))]
    with warnings.catch_warnings(), _quiet_exporter_logs():
        warnings.simplefilter("ignore")  # deprecation chatter from the exporters, not actionable here
        if exporter == "dynamo":
            batch = torch.export.Dim("batch", min=1, max=1 << 20)
            program = torch.onnx.export(
                module, examples, None, dynamo=True, opset_version=opset, input_names=input_names,
                output_names=output_names, dynamic_shapes=tuple({0: batch} for _ in examples), verbose=False,
            )
            model = program.model_proto
        else:
            buffer = io.BytesIO()
            axes = {name: {0: "batch"} for name in [*input_names, *output_names]}
            torch.onnx.export(module, examples, buffer, dynamo=False, opset_version=min(opset, 20),
                              input_names=input_names, output_names=output_names, dynamic_axes=axes)
            model = onnx.load_from_string(buffer.getvalue())
    _declare_output_shapes(model, dict(zip(output_names, shapes, strict=True)))
    return model


def _as_tuple(out) -> tuple[Tensor, ...]:
    return out if isinstance(out, tuple) else (out,)


@contextlib.contextmanager
def _quiet_exporter_logs():
    """The dynamo exporter logs a warning per missing torchvision op; nothing a user can act on."""
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def _declare_output_shapes(model: onnx.ModelProto, shapes: dict[str, tuple[int, ...]]) -> None:
    """Write [batch, ...] into each output's declared shape (the TorchScript exporter leaves symbols such as
    'Slicez_mean_dim_1' after a chunk), so the file documents itself in Netron or onnx.helper."""
    for out in model.graph.output:
        dims = out.type.tensor_type.shape.dim
        del dims[:]
        dims.add().dim_param = "batch"
        for size in shapes[out.name]:
            dims.add().dim_value = size


def set_metadata(model: onnx.ModelProto, meta: ModelMeta, graph: str, precision: str = "fp32",
                 extra: dict[str, str] | None = None) -> None:
    """Write ``meta`` (JSON) and readable keys into ``model.metadata_props``, replacing earlier values; for an
    image model also the preprocessing rule in words (``Preprocess.describe``: one function, so that export and
    docs cannot drift from what training and inference do), and the contract version as ``model_version``."""
    inputs = [i.name for i in model.graph.input]
    outputs = [o.name for o in model.graph.output]
    preprocess = Preprocess.from_meta(meta).describe(meta.value_range) if meta.image_size else {}
    values = {
        META_KEY: meta.to_json(),
        GRAPH_KEY: graph,
        PRECISION_KEY: precision,
        "alitool.inputs": ",".join(inputs),
        "alitool.outputs": ",".join(outputs),
        "name": meta.name,
        "image_size": str(meta.image_size),
        "channels": str(meta.channels),
        "value_range": f"{meta.value_range[0]:g},{meta.value_range[1]:g}",
        "latent_dim": str(meta.latent_dim),
        "feature_dim": str(meta.feature_dim),
        "input_layout": "NCHW float32" if meta.image_size else "ND float32",
        **({"y_dim": str(meta.y_dim), "y_kind": meta.y_kind, "y_names": ",".join(meta.y_names)} if meta.y_dim else {}),
        **({"weights": meta.weights} if meta.weights else {}),
        "version": meta.version,
        "source_sha256": meta.source_sha256,
        **preprocess,
        **(extra or {}),
    }
    kept = [p for p in model.metadata_props if p.key not in values]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    for key, value in values.items():
        model.metadata_props.add(key=key, value=value)
    model.producer_name = "alitool"
    model.producer_version = meta.version
    model.model_version = CONTRACT_VERSION
    model.doc_string = f"ALI {graph} ({meta.name}), {precision}; metadata key '{META_KEY}' holds the full config"


def metadata_map(model: onnx.ModelProto) -> dict[str, str]:
    return {p.key: p.value for p in model.metadata_props}


def read_meta(path: str | Path) -> tuple[ModelMeta, dict[str, str]]:
    path = Path(path)
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as err:  # onnx raises DecodeError / ValueError / OSError depending on the damage
        raise UserError(f"{path}: not a readable ONNX file ({one_line(err, 120)})") from None
    values = metadata_map(model)
    return meta_from_metadata(values, path), values


def save_model(model: onnx.ModelProto, path: Path) -> None:
    data = model.SerializeToString()
    if len(data) > MAX_PROTO_BYTES:
        raise UserError(f"{path}: the model is over 2 GB, more than one ONNX file can hold")
    atomic_write_bytes(path, lambda f: f.write(data))


# ---------------------------------------------------------------------------------------------------------
# Parity: ONNX Runtime against PyTorch on fresh inputs.


def cpu_session(model: onnx.ModelProto | bytes | str | Path, threads: int = 0):
    ort = import_onnxruntime()

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.log_severity_level = 3
    source = model.SerializeToString() if isinstance(model, onnx.ModelProto) else model
    return ort.InferenceSession(source if isinstance(source, bytes) else str(source), options,
                                providers=["CPUExecutionProvider"])


def import_onnxruntime():
    try:
        import onnxruntime
    except ImportError:
        raise UserError("onnxruntime is not installed (the export checks its files with it): "
                        "pip install 'alitool[cpu]' or 'alitool[gpu]'") from None
    return onnxruntime


def fresh_inputs(meta: ModelMeta, batch: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Random images in the value range (or N(0, 2^2) vectors for vector data) and N(0, I) latents."""
    rng = np.random.default_rng(seed)
    if meta.image_size:
        low, high = meta.value_range
        images = rng.uniform(low, high, size=(batch, *meta.input_shape)).astype(np.float32)
    else:
        images = (2.0 * rng.standard_normal((batch, *meta.input_shape))).astype(np.float32)
    return images, rng.standard_normal((batch, meta.latent_dim)).astype(np.float32)


def fresh_conditions(meta: ModelMeta, batch: int, seed: int) -> np.ndarray | None:
    """Random y for a conditional model: one-hot classes or 0/1 attributes; None for an unconditional one."""
    if not meta.y_dim:
        return None
    rng = np.random.default_rng([seed, 7])
    if meta.y_kind == "class":
        return np.eye(meta.y_dim, dtype=np.float32)[rng.integers(0, meta.y_dim, size=batch)]
    return (rng.random((batch, meta.y_dim)) < 0.5).astype(np.float32)


@dataclass
class Parity:
    """Largest |ONNX Runtime - PyTorch| per output, and whether all are within rtol 1e-3 + atol 1e-4."""

    batch: int
    max_abs: dict[str, float] = field(default_factory=dict)
    ok: bool = True

    def line(self, graph: str) -> str:
        diffs = ", ".join(f"{k} {v:.1e}" for k, v in self.max_abs.items())
        return f"{graph}: max |ONNX Runtime - PyTorch| on fresh inputs (batch {self.batch}): {diffs}"


def compare(outputs: list[np.ndarray], reference: list[Tensor], names: list[str], batch: int) -> Parity:
    parity = Parity(batch)
    for name, got, want in zip(names, outputs, reference, strict=True):
        want = want.float().cpu().numpy()
        if got.shape != want.shape:
            parity.max_abs[name] = float("inf")
            parity.ok = False
            continue
        parity.max_abs[name] = float(np.abs(got - want).max()) if got.size else 0.0
        parity.ok &= bool(np.allclose(got, want, rtol=RTOL, atol=ATOL))
    return parity


# ---------------------------------------------------------------------------------------------------------
# The export itself.


@dataclass
class ExportedPair:
    encoder_path: Path
    decoder_path: Path
    meta: ModelMeta
    encoder_parity: Parity
    decoder_parity: Parity
    exporter: str


def export_networks(encoder: nn.Module, decoder: nn.Module, meta: ModelMeta, out_dir: Path,
                    exporter: str = "dynamo", log: Callable[[str], None] = print) -> ExportedPair:
    """Export ``encoder`` and ``decoder`` (CPU, eval) to ``out_dir/encoder.onnx`` and ``decoder.onnx``."""
    encoder, decoder = encoder.cpu().eval(), decoder.cpu().eval()
    out_dir = Path(out_dir)
    example_x, example_z = (torch.from_numpy(a) for a in fresh_inputs(meta, EXPORT_BATCH, seed=0))
    names = encoder_output_names(encoder)
    meta = replace(meta, has_encoder=True, has_decoder=True)
    example_y = fresh_conditions(meta, EXPORT_BATCH, seed=0)
    # A conditional model's y is a second input of both graphs (section 4.4).
    conditioned = () if example_y is None else (torch.from_numpy(example_y),)
    y_name = [] if example_y is None else [Y]

    # The graphs get batch norm folded into the layer before it (export/fold.py); the parity check below compares
    # them with the unfolded networks.
    enc_model, used = _export_with_fallback(EncoderGraph(fold_batch_norm(encoder)), (example_x, *conditioned),
                                            [IMAGES, *y_name], names, exporter, log)
    dec_model, _ = _export_with_fallback(fold_batch_norm(decoder), (example_z, *conditioned),
                                         [Z, *y_name], [IMAGES], used, log)
    set_metadata(enc_model, meta, "encoder")
    set_metadata(dec_model, meta, "decoder")

    x, z = fresh_inputs(meta, PARITY_BATCH, seed=1)
    y = fresh_conditions(meta, PARITY_BATCH, seed=1)
    y_feed = {} if y is None else {Y: y}
    y_torch = None if y is None else torch.from_numpy(y)
    enc_parity = compare(cpu_session(enc_model).run(names, {IMAGES: x, **y_feed}),
                         reference_encoder_outputs(encoder, torch.from_numpy(x), y_torch), names, PARITY_BATCH)
    with torch.no_grad():
        dec_reference = [decoder(torch.from_numpy(z), *(() if y_torch is None else (y_torch,)))]
    dec_parity = compare(cpu_session(dec_model).run([IMAGES], {Z: z, **y_feed}), dec_reference, [IMAGES],
                         PARITY_BATCH)
    for graph, parity in (("encoder", enc_parity), ("decoder", dec_parity)):
        if not parity.ok:
            raise UserError(f"the exported {graph} disagrees with PyTorch ({parity.line(graph)}); nothing written")

    enc_path, dec_path = out_dir / ENCODER_ONNX, out_dir / DECODER_ONNX
    save_model(enc_model, enc_path)
    save_model(dec_model, dec_path)
    return ExportedPair(enc_path, dec_path, meta, enc_parity, dec_parity, used)


def _export_with_fallback(module: nn.Module, example: Tensor | tuple[Tensor, ...], input_name: str | list[str],
                          output_names: list[str], exporter: str,
                          log: Callable[[str], None]) -> tuple[onnx.ModelProto, str]:
    try:
        return to_onnx(module, example, input_name, output_names, exporter), exporter
    except UserError:
        raise
    except Exception as err:  # the dynamo exporter's failures come as many exception types
        if exporter != "dynamo":
            raise UserError(f"ONNX export failed: {one_line(err, 200)}") from None
        log(f"note: the dynamo ONNX exporter failed ({one_line(err, 160)}); using the TorchScript exporter instead")
        return to_onnx(module, example, input_name, output_names, "torchscript"), "torchscript"


def describe_outputs(model_path: Path) -> str:
    """``name [dims]`` for each output, as the file declares them (batch shown as its symbol)."""
    model = onnx.load(str(model_path), load_external_data=False)
    parts = []
    for out in model.graph.output:
        dims = [d.dim_param or str(d.dim_value) for d in out.type.tensor_type.shape.dim]
        parts.append(f"{out.name} [{', '.join(dims)}]")
    return ", ".join(parts)
