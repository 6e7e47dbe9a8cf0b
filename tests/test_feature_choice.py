"""`alitool encode`'s default features: without --features it writes z_mean and says, in one stderr note line,
that --features paper (paper section 4.3) measured better for a classifier, and where the figures are
(docs/encode.md); with --features there is no note. Real tiny model, real digit PNGs."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import digit_images, invoke_cli, save_tiny_model, write_digit_files

from alitool.backends import load_backend

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return save_tiny_model(tmp_path_factory.mktemp("model") / "checkpoint.pt")


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    paths, _ = write_digit_files(tmp_path_factory.mktemp("in") / "digits", 6)
    return paths[0].parent


def notes(result) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.startswith("note:")]


def test_default_writes_z_mean_with_one_note_naming_the_better_features(tmp_path, model, digits):
    result = invoke_cli("encode", digits, "--out", tmp_path / "feats.npy", "--model", model)
    assert result.exit_code == 0, result.output
    assert len(notes(result)) == 1, result.stderr
    note = notes(result)[0]
    assert "z_mean" in note and "--features paper" in note and "docs/encode.md" in note
    assert "Which features to use" in note
    expected = load_backend(model, device="cpu").encode(digit_images(6)[:, None] / np.float32(255), kind="mean")
    np.testing.assert_allclose(np.load(tmp_path / "feats.npy"), expected, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("kind", ["mean", "paper"])
def test_no_note_when_features_is_given(tmp_path, model, digits, kind):
    result = invoke_cli("encode", digits, "--out", tmp_path / "feats.npy", "--model", model, "--features", kind)
    assert result.exit_code == 0, result.output
    assert notes(result) == [] and result.stderr == "", result.stderr


def test_help_says_what_the_default_is_and_what_to_use_for_a_classifier():
    result = invoke_cli("encode", "--help")
    text = " ".join(result.output.split())
    assert "z_mean" in text and "--features paper" in text and "Which features to use" in text


def test_the_note_points_at_a_section_that_exists():
    doc = (ROOT / "docs" / "encode.md").read_text(encoding="utf-8")
    assert "\n## Which features to use\n" in doc
    assert "benchmarks/feature_choice.py" in doc


def test_benchmark_candidates_match_what_encode_writes(model):
    """The benchmark builds mean and paper from the encoder's taps; they must be encode's --features kinds, or
    its table would compare something else."""
    spec = importlib.util.spec_from_file_location("feature_choice", ROOT / "benchmarks" / "feature_choice.py")
    bench = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = bench  # its dataclass looks its module up there
    spec.loader.exec_module(bench)
    backend = load_backend(model, device="cpu")
    x = bench.model_inputs(backend, digit_images(16)[:, None])
    bench.check_taps_match_backend(backend, x)
    widths = {name: bench.tapped(backend.encoder, x, pick, backend.meta.latent_dim).shape[1]
              for name, pick in bench.CANDIDATES.items()}
    assert widths["mean"] == backend.meta.latent_dim
    assert widths["paper"] == backend.meta.feature_dim
    with torch.inference_mode():
        taps: list[torch.Tensor] = []
        backend.encoder.stack(x, taps)
    assert widths["mu+h1"] == widths["mean"] + widths["h1"] == widths["mean"] + taps[-2][0].numel()
