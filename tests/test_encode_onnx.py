"""The RUN commands on exported models (ONNX fp32 and static INT8, made by `alitool export` from a tiny real
checkpoint): same rows as PyTorch, encoder-only files refused where a decoder is needed, newest export first."""

from __future__ import annotations

import os
import shutil

import numpy as np
import pytest
from helpers import invoke_cli, read_index, save_tiny_model, write_digit_files

from alitool.cli import main

pytest.importorskip("onnxruntime")
if "export" not in main.commands:
    pytest.skip("`alitool export` is not in this build yet", allow_module_level=True)


run = invoke_cli  # `alitool ARGS` through click's test runner


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A tiny checkpoint, its ONNX export (fp32 + INT8 calibrated on digit PNGs) and some inputs."""
    root = tmp_path_factory.mktemp("onnx")
    checkpoint = save_tiny_model(root / "run" / "checkpoint.pt")
    paths, video = write_digit_files(root / "digits", 24)
    result = run("export", checkpoint, "--out", root / "run" / "export", "--exporter", "torchscript", "--int8",
                 "--calib", root / "digits")
    assert result.exit_code == 0, result.output
    return root


def test_onnx_rows_match_torch_rows(exported):
    rows = {}
    for label, model in (("torch", exported / "run" / "checkpoint.pt"),
                         ("onnx", exported / "run" / "export" / "encoder.onnx"),
                         ("int8", exported / "run" / "export" / "encoder.int8.onnx")):
        out = exported / f"{label}.npy"
        result = run("encode", exported / "digits", exported / "digits.avi", "--out", out, "--model", model,
                     "--batch-size", 7)
        assert result.exit_code == 0, result.output
        rows[label] = np.load(out)
        assert len(read_index(exported / f"{label}.index.csv")) == 48
    np.testing.assert_allclose(rows["onnx"], rows["torch"], rtol=1e-3, atol=1e-4)
    cosine = (rows["int8"] * rows["onnx"]).sum(1) / np.linalg.norm(rows["int8"], axis=1) / np.linalg.norm(
        rows["onnx"], axis=1)
    assert rows["int8"].shape == rows["onnx"].shape and cosine.mean() > 0.95


def test_onnx_pictures_and_paper_features(exported):
    export = exported / "run" / "export"
    out = exported / "recon.png"
    assert run("reconstruct", exported / "digits", "--out", out, "--model", export).exit_code == 0
    assert out.stat().st_size > 0
    assert run("sample", "--n", 4, "--out", exported / "s.png", "--model", export / "decoder.onnx").exit_code == 0
    paper = run("encode", exported / "digits", "--out", exported / "paper.npy", "--model", export,
                "--features", "paper")
    assert paper.exit_code == 0, paper.output
    torch_paper = run("encode", exported / "digits", "--out", exported / "paper_t.npy", "--model",
                      exported / "run", "--features", "paper", "--backend", "torch")
    assert torch_paper.exit_code == 0
    np.testing.assert_allclose(np.load(exported / "paper.npy"), np.load(exported / "paper_t.npy"), rtol=1e-3,
                               atol=1e-4)


@pytest.mark.parametrize("model", ["run/checkpoint.pt", "run/export/encoder.onnx"])
def test_sampled_features_follow_the_seed(exported, model):
    z = {}
    for name, seed in (("a", 3), ("b", 3), ("c", 4)):
        out = exported / f"z_{name}.npy"
        result = run("encode", exported / "digits", "--out", out, "--model", exported / model, "--features", "z",
                     "--seed", seed)
        assert result.exit_code == 0, result.output
        z[name] = np.load(out)
    np.testing.assert_array_equal(z["a"], z["b"])
    assert not np.allclose(z["a"], z["c"])


def test_encoder_only_file_where_a_decoder_is_needed(exported, tmp_path):
    alone = tmp_path / "alone"
    alone.mkdir()
    shutil.copy(exported / "run" / "export" / "encoder.onnx", alone / "encoder.onnx")
    digit = sorted((exported / "digits").glob("*.png"))[:2]
    for args in (("reconstruct", exported / "digits", "--out", tmp_path / "r.png"),
                 ("interpolate", *digit, "--out", tmp_path / "i.png"),
                 ("sample", "--out", tmp_path / "s.png")):
        result = run(*args, "--model", alone / "encoder.onnx")
        errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
        assert result.exit_code == 2 and len(errors) == 1, result.output
        assert "has no decoder" in errors[0] and "encoder.onnx" in errors[0]
    assert not list(tmp_path.glob("*.png"))
    # ... and a decoder alone cannot encode
    shutil.copy(exported / "run" / "export" / "decoder.onnx", tmp_path / "decoder.onnx")
    os.remove(alone / "encoder.onnx")
    shutil.move(tmp_path / "decoder.onnx", alone / "decoder.onnx")
    result = run("encode", exported / "digits", "--out", tmp_path / "f.npy", "--model", alone / "decoder.onnx")
    assert result.exit_code == 2 and "has no encoder" in result.stderr


def test_default_model_prefers_the_newest_export(exported, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    shutil.copytree(exported / "run", tmp_path / "runs" / "digits")
    result = run("encode", exported / "digits", "--out", "f.npy")
    assert result.exit_code == 0, result.output
    assert f"model: {os.path.join('runs', 'digits', 'export')} (onnxruntime" in result.stdout
