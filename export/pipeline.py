"""The export stage end to end, as ``alitool export`` runs it: checkpoint -> ONNX (+ parity) -> INT8 (+ fidelity)
-> TensorRT engines. Each step reports one or two lines through ``log``; files already exported from the same
checkpoint are reused, so ``alitool export --int8`` then ``alitool export --trt`` does not trace the model twice.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from alitool.contract.names import DECODER_ONNX, ENCODER_INT8_ONNX, ENCODER_ONNX, EXPORT_DIR
from alitool.errors import UserError
from alitool.outputs import claim


@dataclass
class ExportOptions:
    out: Path | None = None  # default: <run>/export (EXPORT_DIR)
    int8: bool = False
    int8_scheme: str = ""  # a name in export/quantize.py SCHEMES; "" is its DEFAULT_SCHEME (portable)
    calib: str = ""  # "", a number of training images, a folder or a .npy file
    trt: bool = False
    fp16: bool = False
    batch: int = 64  # TensorRT profile: opt and max batch
    exporter: str = "dynamo"
    data_dir: str = ""
    force: bool = False  # export the ONNX files again even when they match the checkpoint
    raw_weights: bool = False  # a train.ema run: export the raw weights instead of their average


@dataclass
class ExportReport:
    out_dir: Path
    files: list[Path] = field(default_factory=list)
    parity: list[str] = field(default_factory=list)
    fidelity: object | None = None  # quantize.Fidelity
    int8_scheme: str = ""  # the scheme the INT8 file was written with
    reused: bool = False


def export_checkpoint(source: str | Path, options: ExportOptions, log: Callable[[str], None] = print) -> ExportReport:
    from alitool.runs import run_checkpoint

    checkpoint = run_checkpoint(source)
    scheme = _int8_scheme(options) if options.int8 else None  # an unknown or TensorRT-less scheme fails before work
    out_dir = Path(options.out) if options.out else checkpoint.parent / EXPORT_DIR
    # the export folder: one line if it cannot be written, locked against a second export into it, stale
    # temporaries of a killed export removed (alitool.outputs); held until this export ends
    with claim(out_dir, folder=True, what="--out" if options.out else "export folder", clean=(".",)):
        return _export_into(checkpoint, out_dir, scheme, options, log)


def _export_into(checkpoint: Path, out_dir: Path, scheme, options: ExportOptions,
                 log: Callable[[str], None]) -> ExportReport:
    from alitool.checkpoint import file_sha256
    from alitool.export.onnx import describe_outputs, export_networks
    from alitool.trained_networks import load_networks_and_weights, meta_from_config

    report = ExportReport(out_dir)
    sha = file_sha256(checkpoint)
    encoder_path, decoder_path = out_dir / ENCODER_ONNX, out_dir / DECODER_ONNX

    cfg, encoder, decoder, weights = load_networks_and_weights(checkpoint, raw_weights=options.raw_weights)
    if options.raw_weights and not weights:
        log(f"note: {checkpoint} keeps no weight average (train.ema was off); --raw-weights changes nothing")
    if not options.force and _up_to_date((encoder_path, decoder_path), sha, weights):
        log(f"{encoder_path} and {decoder_path.name} are already exported from {checkpoint} "
            f"(sha256 {sha[:12]}); reusing them (--force exports again)")
        report.reused = True
    else:
        which = {"ema": ", its weight average (train.ema; --raw-weights for the raw ones)",
                 "raw": ", its raw weights"}.get(weights, "")
        log(f"exporting {checkpoint} ({cfg.name}, sha256 {sha[:12]}{which}) with the {options.exporter} ONNX "
            f"exporter...")
        pair = export_networks(encoder, decoder, meta_from_config(cfg, sha, weights), out_dir, options.exporter, log)
        report.parity = [pair.encoder_parity.line("encoder"), pair.decoder_parity.line("decoder")]
        y_input = f", y [batch, {pair.meta.y_dim}]" if pair.meta.y_dim else ""
        log(f"wrote {encoder_path}: images [{_dims(pair.meta.input_shape)}]{y_input} -> "
            f"{describe_outputs(encoder_path)}")
        log(f"wrote {decoder_path}: z [batch, {pair.meta.latent_dim}]{y_input} -> {describe_outputs(decoder_path)}")
        if pair.meta.y_dim:
            log(f"y means {pair.meta.y_kind} ({', '.join(pair.meta.y_names[:12])}"
                f"{', ...' if pair.meta.y_dim > 12 else ''}); recorded in both files")
        log("metadata in both files (key 'alitool': image size, channels, value range, latent dim, config, "
            "version, source sha256)")
        for line in report.parity:
            log(f"parity {line}")
    report.files += [encoder_path, decoder_path]

    int8_path = out_dir / ENCODER_INT8_ONNX
    if options.int8:
        from alitool.export.quantize import (
            calibration_set,
            low_fidelity_advice,
            measure_fidelity,
            quantize_encoder,
            scheme_note,
        )

        calibration, heldout = calibration_set(cfg, options.calib, options.data_dir)
        log(f"quantising the encoder to INT8 (static QDQ, per-channel, scheme {scheme.name}), calibrated on "
            f"{calibration.source}...")
        quantize_encoder(encoder_path, int8_path, calibration, scheme)
        report.fidelity = measure_fidelity(encoder_path, int8_path, heldout)
        report.int8_scheme = scheme.name
        log(f"wrote {int8_path}")
        log(scheme_note(scheme))
        log(report.fidelity.line())
        advice = low_fidelity_advice(report.fidelity, scheme, len(calibration.images))
        if advice:
            log(advice)
        report.files.append(int8_path)
    elif _up_to_date((int8_path,), sha, weights):
        report.files.append(int8_path)  # from an earlier `--int8` of this checkpoint: still valid, still there

    if options.trt:
        _build_engines(out_dir, report, options, log)
    return report


def _int8_scheme(options: ExportOptions):
    from alitool.export.quantize import DEFAULT_SCHEME, int8_scheme

    scheme = int8_scheme(options.int8_scheme or DEFAULT_SCHEME)
    if options.trt and not scheme.tensorrt:
        raise UserError(f"--int8-scheme {scheme.name} is for ONNX Runtime only ({scheme.safe_on}); TensorRT needs "
                        f"a symmetric int8 scheme with float biases: {DEFAULT_SCHEME} (the default) or vnni")
    return scheme


def _build_engines(out_dir: Path, report: ExportReport, options: ExportOptions, log: Callable[[str], None]) -> None:
    from alitool.export.tensorrt import build_engine, engine_name

    ready = "; the ONNX files are ready to use with onnxruntime: " + ", ".join(str(f) for f in report.files)
    float_precision = "fp16" if options.fp16 else "fp32"
    plan = [("encoder", "int8", ENCODER_INT8_ONNX) if options.int8 else ("encoder", float_precision, ENCODER_ONNX),
            ("decoder", float_precision, DECODER_ONNX)]
    for graph, precision, onnx_name in plan:
        onnx_file = out_dir / onnx_name
        engine = out_dir / engine_name(graph, precision)
        sidecar = build_engine(onnx_file, engine, precision, options.batch, ready=ready, log=log)
        log(f"wrote {engine} and {engine.name}.json (TensorRT {sidecar['tensorrt_version']}, {sidecar['gpu_name']}, "
            f"compute capability {sidecar['compute_capability']}, {precision}, batch 1..{options.batch})")
        report.files.append(engine)


def _up_to_date(paths: tuple[Path, ...], sha: str, weights: str = "") -> bool:
    """Files exported from this checkpoint (sha256) and from the same weights (average or raw)."""
    from alitool.export.onnx import read_meta

    if not all(p.is_file() for p in paths):
        return False
    try:
        return all((m.source_sha256, m.weights) == (sha, weights) for m in (read_meta(p)[0] for p in paths))
    except UserError:
        return False


def _dims(shape: tuple[int, ...]) -> str:
    return ", ".join(["batch", *map(str, shape)])

