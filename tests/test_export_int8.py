"""INT8 export: a briefly trained tiny ALI on real digits, quantised with real onnxruntime, calibrated on real
training images, held to the fidelity bound on the held-out test split."""

from __future__ import annotations

import logging
import subprocess
import sys

import cv2
import numpy as np
import onnx
import pytest
from helpers import TINY_CONV, alitool_subprocess
from onnx import numpy_helper

from alitool.backends import load_backend
from alitool.config import load_config, with_train
from alitool.errors import UserError
from alitool.export.pipeline import ExportOptions, export_checkpoint
from alitool.export.quantize import (
    SCHEMES,
    Fidelity,
    calibration_set,
    int8_scheme,
    low_fidelity_advice,
    quantize_encoder,
    read_images,
    z_mean_fidelity,
)


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    import torch

    from alitool.trainers.loop import Trainer

    torch.set_num_threads(1)
    run = tmp_path_factory.mktemp("int8") / "runs" / "digits-tiny"
    cfg = with_train(load_config("digits", TINY_CONV), max_steps=120, seed=0, device="cpu")
    trainer = Trainer(cfg, run, log=lambda _: None)
    trainer.start_fresh()
    trainer.fit()
    return run


class _Collect(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record):
        self.messages.append(record.getMessage())


@pytest.fixture(scope="module")
def int8_export(trained_run):
    logs: list[str] = []
    warned = _Collect()  # onnxruntime's quantiser warns through the root logger
    logging.getLogger().addHandler(warned)
    try:
        report = export_checkpoint(trained_run, ExportOptions(int8=True, calib="256", exporter="torchscript"),
                                   log=logs.append)
    finally:
        logging.getLogger().removeHandler(warned)
    return trained_run / "export", report, logs + [f"WARNING {m}" for m in warned.messages]


def test_int8_export_is_quiet(int8_export):
    """Batch norm is folded before export (export/fold.py), so the quantiser has no 1-D BN weight to warn about
    ("Axis 1 is out-of-range for weight ...bn.weight" before)."""
    _, _, logs = int8_export
    assert not [line for line in logs if line.startswith("WARNING")]


def test_int8_meets_the_fidelity_bound_on_held_out_digits(int8_export):
    _, report, logs = int8_export
    fidelity = report.fidelity
    assert fidelity.images == 359 and "test split" in fidelity.source  # digits' held-out 20 %
    assert fidelity.cosine_mean >= 0.99, fidelity.line()
    assert fidelity.relative_error < 0.05, fidelity.line()
    assert any(line.startswith("INT8 fidelity vs fp32") for line in logs)
    assert any(line.startswith("INT8 scheme portable: int8 activations, 7-bit int8 weights") and "every CPU" in line
               for line in logs)
    assert not [line for line in logs if line.startswith("warning:")]


def test_int8_file_is_static_symmetric_per_channel_qdq(int8_export):
    folder, _, _ = int8_export
    model = onnx.load(str(folder / "encoder.int8.onnx"))
    ops = [n.op_type for n in model.graph.node]
    assert "QuantizeLinear" in ops and "DequantizeLinear" in ops and "QLinearConv" not in ops  # QDQ, not QOperator
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    # What TensorRT's explicit quantisation accepts: int8 zero points of 0 (symmetric), no int32 (bias) tensors.
    assert not [name for name, value in inits.items() if value.dtype == np.int32]
    zero_points = [inits[n.input[2]] for n in model.graph.node
                   if n.op_type in ("QuantizeLinear", "DequantizeLinear") and len(n.input) > 2 and n.input[2] in inits]
    assert zero_points and all(zp.dtype == np.int8 and not zp.any() for zp in zero_points)
    per_channel = [n for n in model.graph.node if n.op_type == "DequantizeLinear"
                   and n.input[0] in inits and inits[n.input[0]].ndim == 4 and inits[n.input[1]].size > 1]
    assert per_channel, "conv weights should carry one scale per output channel"
    # z only: the features taps would keep ONNX Runtime from fusing the last layers into int8 kernels
    assert [o.name for o in model.graph.output] == ["z_mean", "z_log_sigma"]
    meta = {p.key: p.value for p in model.metadata_props}
    assert meta["alitool.precision"] == "int8" and "digits train split, 256" in meta["alitool.calibration"]
    # The default scheme, named in the file: 7-bit weights (|w| <= 63), which x86 without VNNI cannot saturate.
    assert meta["alitool.int8_scheme"] == "portable" and "7-bit int8 weights" in meta["alitool.quantization"]
    weights = [inits[n.input[0]] for n in model.graph.node if n.op_type == "DequantizeLinear"
               and n.input[0] in inits and inits[n.input[0]].ndim >= 2]
    assert weights and max(int(np.abs(w.astype(np.int32)).max()) for w in weights) <= 64


def test_int8_backend_encodes_and_decodes(int8_export, trained_run):
    folder, _, _ = int8_export
    int8 = load_backend(folder / "encoder.int8.onnx")
    fp32 = load_backend(folder / "encoder.onnx")
    torch_model = load_backend(trained_run / "checkpoint.pt")
    assert int8.precision["encoder"] == "int8" and int8.meta.has_decoder  # decoder.onnx found next to it
    images = np.random.default_rng(0).uniform(0, 1, (40, 1, 8, 8)).astype(np.float32)
    z8, z32, zt = int8.encode(images), fp32.encode(images), torch_model.encode(images)
    assert z8.shape == (40, 4) and np.isfinite(z8).all()
    assert z_mean_fidelity(zt, z8).cosine_mean > 0.95  # random inputs are off-distribution, so a loose bound
    np.testing.assert_allclose(z32, zt, rtol=1e-3, atol=1e-4)
    assert int8.decode(z8).shape == (40, 1, 8, 8)
    with pytest.raises(UserError, match="has no 'features' output") as refused:
        int8.encode(images, kind="paper")
    assert f"--model {folder / 'encoder.onnx'}" in str(refused.value)  # the file that has them, by its path


def test_calibration_from_a_folder_and_npy(tmp_path):
    cfg = load_config("digits", TINY_CONV)
    folder = tmp_path / "imgs"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(5):
        cv2.imwrite(str(folder / f"{i}.png"), rng.integers(0, 256, (30, 20, 3), dtype=np.uint8))
    (folder / "notes.txt").write_text("not an image")
    (folder / "bad.png").write_bytes(b"truncated")
    images = read_images(folder, cfg)
    assert images.images.shape == (5, 1, 8, 8) and images.images.dtype == np.float32
    assert 0.0 <= images.images.min() and images.images.max() <= 1.0 and "1 unreadable skipped" in images.source
    calib, heldout = calibration_set(cfg, str(folder))
    assert len(calib.images) == 5 and "test split" in heldout.source

    np.save(tmp_path / "x.npy", rng.integers(0, 256, (7, 1, 8, 8), dtype=np.uint8))
    assert read_images(tmp_path / "x.npy", cfg).images.shape == (7, 1, 8, 8)
    np.save(tmp_path / "wrong.npy", np.zeros((7, 3, 8, 8), np.float32))
    with pytest.raises(UserError, match=r"wrong.npy: array of shape \(7, 3, 8, 8\)"):
        read_images(tmp_path / "wrong.npy", cfg)
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no images"):
        read_images(tmp_path / "empty", cfg)
    with pytest.raises(UserError, match="no such folder"):
        calibration_set(cfg, str(tmp_path / "missing"))


def test_missing_dataset_asks_for_calib_folder(tmp_path):
    cfg = load_config("digits", [*TINY_CONV, "data.name=svhn", "data.image_size=8"])
    with pytest.raises(UserError, match="--calib FOLDER"):
        calibration_set(cfg, "16", data_dir=str(tmp_path / "nowhere"))


@pytest.mark.slow
def test_cli_int8_prints_fidelity(trained_run, tmp_path):
    result = alitool_subprocess("export", trained_run, "--int8", "--calib", "64", "--out", tmp_path / "out",
                                "--exporter", "torchscript", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "INT8 fidelity vs fp32 on digits test split, 359 images: z_mean cosine similarity" in result.stdout
    assert (tmp_path / "out" / "encoder.int8.onnx").is_file()


def _domains(model: onnx.ModelProto) -> tuple[set[str], set[str]]:
    """(declared opset domains, domains its nodes use), "ai.onnx" read as the default domain ""."""
    declared = {"" if o.domain == "ai.onnx" else o.domain for o in model.opset_import}
    return declared, {n.domain or "" for n in model.graph.node} | {""}


def test_files_declare_only_the_opset_domains_they_use(int8_export):
    """ONNX Runtime's quantiser declared nine domains (com.microsoft, org.pytorch.aten, ...) on a graph of standard
    ONNX nodes; a runtime built with fewer operator sets need not know them."""
    folder, _, _ = int8_export
    for name in ("encoder.onnx", "decoder.onnx", "encoder.int8.onnx"):
        declared, used = _domains(onnx.load(str(folder / name)))
        assert declared == used == {""}, (name, declared)


def _convert_to_ort(folder, out):
    """ONNX Runtime Mobile's converter, both optimisation styles, every .onnx in ``folder``; it exits non-zero
    when one file fails."""
    return subprocess.run([sys.executable, "-m", "onnxruntime.tools.convert_onnx_models_to_ort", str(folder),
                           "--optimization_style", "Fixed", "Runtime", "--output_dir", str(out)],
                          capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_ort_mobile_converts_the_files(int8_export, tmp_path):
    """encoder.onnx and decoder.onnx in both styles, and the INT8 file: the default scheme's in the Fixed style, the
    mobile scheme's in both. The default file keeps float biases for TensorRT, which ONNX Runtime itself rewrites
    into int32 ones at load; its Runtime style then fails on the nodes it made (onnxruntime 1.32), so the mobile
    scheme writes int32 biases in the first place."""
    folder, _, _ = int8_export
    floats, fixed_only = tmp_path / "float", tmp_path / "int8"
    floats.mkdir(), fixed_only.mkdir()
    for name in ("encoder.onnx", "decoder.onnx"):
        (floats / name).write_bytes((folder / name).read_bytes())
    cfg = load_config("digits", TINY_CONV)
    calibration, _ = calibration_set(cfg, "64")
    quantize_encoder(folder / "encoder.onnx", floats / "encoder.mobile.int8.onnx", calibration, "mobile")
    result = _convert_to_ort(floats, tmp_path / "ort")
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    built = sorted(p.name for p in (tmp_path / "ort").glob("*.ort"))
    assert len(built) == 6, built  # 3 files x 2 styles
    mobile = onnx.load(str(floats / "encoder.mobile.int8.onnx"))
    assert {p.key: p.value for p in mobile.metadata_props}["alitool.int8_scheme"] == "mobile"
    assert _domains(mobile)[0] == {""}

    (fixed_only / "encoder.int8.onnx").write_bytes((folder / "encoder.int8.onnx").read_bytes())
    result = subprocess.run([sys.executable, "-m", "onnxruntime.tools.convert_onnx_models_to_ort", str(fixed_only),
                             "--optimization_style", "Fixed", "--output_dir", str(tmp_path / "ort-fixed")],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]


def test_trt_refuses_an_onnx_runtime_only_scheme_before_any_work(trained_run, tmp_path):
    with pytest.raises(UserError, match="--int8-scheme mobile is for ONNX Runtime only"):
        export_checkpoint(trained_run, ExportOptions(out=tmp_path, int8=True, int8_scheme="mobile", trt=True),
                          log=lambda _: None)
    assert not list(tmp_path.iterdir())


def test_scheme_table():
    """The running side names the full-range schemes without importing export/ (alitool/cpu_features.py); the CLI
    lists the choices without importing onnxruntime. Both must match the one table."""
    from alitool.commands.export import export
    from alitool.cpu_features import FULL_RANGE_INT8_SCHEMES

    choices = next(p for p in export.params if p.name == "int8_scheme").type.choices
    assert list(choices) == list(SCHEMES)
    assert {n for n, s in SCHEMES.items() if s.weights == "int8" and not s.reduce_range} == FULL_RANGE_INT8_SCHEMES
    assert int8_scheme("portable").tensorrt and int8_scheme("vnni").tensorrt
    assert not int8_scheme("u8u8").tensorrt and not int8_scheme("mobile").tensorrt
    with pytest.raises(UserError, match="expected one of portable, vnni"):
        int8_scheme("fast")


def test_low_fidelity_advice_names_the_cause(monkeypatch):
    import alitool.export.quantize as quantize

    good = Fidelity(359, 0.9998, 0.999, 0.02, "digits test split")
    bad = Fidelity(359, 0.92, 0.68, 0.43, "digits test split")
    assert low_fidelity_advice(good, int8_scheme("vnni"), 512) is None

    monkeypatch.setattr(quantize, "has_int8_dot_product", lambda: False)  # x86 without VNNI/AMX
    advice = low_fidelity_advice(bad, int8_scheme("vnni"), 512)
    assert "no VNNI/AMX" in advice and "--int8-scheme portable" in advice and "--calib" not in advice

    monkeypatch.setattr(quantize, "has_int8_dot_product", lambda: True)
    advice = low_fidelity_advice(bad, int8_scheme("portable"), 512)
    assert "do not saturate" in advice and "--calib 2000" in advice and "encoder.onnx" in advice
    assert "--calib 2000" not in low_fidelity_advice(bad, int8_scheme("portable"), 5000)


def test_backend_warns_where_the_scheme_saturates(int8_export, tmp_path, monkeypatch, caplog):
    """A full-range file (or one from before schemes, which were full-range) on x86 without VNNI/AMX: one warning at
    load. The default scheme never warns."""
    import alitool.backends.onnx_backend as onnx_backend
    import alitool.cpu_features as cpu_features

    folder, _, _ = int8_export
    legacy = onnx.load(str(folder / "encoder.int8.onnx"))
    kept = [p for p in legacy.metadata_props if p.key not in ("alitool.int8_scheme", "alitool.quantization")]
    del legacy.metadata_props[:]
    legacy.metadata_props.extend(kept)
    onnx.save(legacy, str(tmp_path / "encoder.int8.onnx"))

    monkeypatch.setattr(cpu_features, "has_int8_dot_product", lambda: False)
    monkeypatch.setattr(onnx_backend, "_warned_int8", set())
    with caplog.at_level(logging.WARNING, logger="alitool"):
        load_backend(folder / "encoder.int8.onnx", device="cpu")
        assert not [r for r in caplog.records if "saturate" in r.getMessage()]
        load_backend(tmp_path / "encoder.int8.onnx", device="cpu")
        load_backend(tmp_path / "encoder.int8.onnx", device="cpu")  # once per file
    warnings = [r.getMessage() for r in caplog.records if "saturate" in r.getMessage()]
    assert len(warnings) == 1 and "no scheme recorded" in warnings[0] and "scheme portable" in warnings[0]

    monkeypatch.setattr(cpu_features, "has_int8_dot_product", lambda: True)
    monkeypatch.setattr(onnx_backend, "_warned_int8", set())
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="alitool"):
        load_backend(tmp_path / "encoder.int8.onnx", device="cpu")
    assert not [r for r in caplog.records if "saturate" in r.getMessage()]
