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
from onnx import numpy_helper
from test_export_onnx import TINY_CONV

from alitool.backends import load_backend
from alitool.config import load_config, with_train
from alitool.errors import UserError
from alitool.export.pipeline import ExportOptions, export_checkpoint
from alitool.export.quantize import calibration_set, read_images, z_mean_fidelity


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
    with pytest.raises(UserError, match="has no 'features' output"):
        int8.encode(images, kind="paper")


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


def test_cli_int8_prints_fidelity(trained_run, tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "alitool.cli", "export", str(trained_run), "--int8", "--calib", "64",
         "--out", str(tmp_path / "out"), "--exporter", "torchscript"],
        capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "INT8 fidelity vs fp32 on digits test split, 359 images: z_mean cosine similarity" in result.stdout
    assert (tmp_path / "out" / "encoder.int8.onnx").is_file()
