"""The encode pipeline with a real (tiny, random-init) model: rows, index, feature kinds, atomic output,
and a real interrupted run (a subprocess killed mid-way leaves no half-written feats.npy)."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from helpers import read_index, save_tiny_model, write_digit_files

from alitool.backends import load_backend
from alitool.contract.preprocess import load_image, prepare_frame
from alitool.encoding.encode import encode_to_npy, preprocess_for
from alitool.encoding.feature_files import NpyRowWriter, index_path_for
from alitool.io.video import read_frame


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    return save_tiny_model(tmp_path_factory.mktemp("model") / "checkpoint.pt")


@pytest.fixture(scope="module")
def backend(tiny_model):
    return load_backend(tiny_model, device="cpu")


def test_npy_writer_grows_commits_and_aborts_atomically(tmp_path):
    out = tmp_path / "feats.npy"
    out.write_bytes(b"previous")
    rng = np.random.default_rng(0)
    parts = [rng.standard_normal((n, 5)).astype(np.float32) for n in (3, 1, 7, 2)]
    writer = NpyRowWriter(out, 5, capacity=2)
    for part in parts:
        writer.append(part)
        with open("/proc/self/maps") as maps:  # only the batch being written is ever mapped
            assert writer.tmp.name not in maps.read()
    assert out.read_bytes() == b"previous"  # nothing replaced before commit
    writer.commit()
    np.testing.assert_array_equal(np.load(out), np.concatenate(parts))
    assert np.load(out, mmap_mode="r").shape == (13, 5)
    assert [p.name for p in tmp_path.iterdir()] == ["feats.npy"]  # the temporary file is gone

    aborted = NpyRowWriter(out, 5)
    aborted.append(parts[0])
    aborted.abort()
    assert np.load(out).shape == (13, 5) and [p.name for p in tmp_path.iterdir()] == ["feats.npy"]


def test_rows_match_index_and_are_reproducible_from_it(tmp_path, backend):
    paths, video = write_digit_files(tmp_path / "digits", 21)
    (tmp_path / "digits" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    out = tmp_path / "out" / "feats.npy"
    report = encode_to_npy(backend, [str(tmp_path / "digits"), str(video)], out, batch_size=8, workers=2,
                           progress=False)
    feats, index = np.load(out), read_index(index_path_for(out))
    assert feats.dtype == np.float32 and feats.shape == (42, 4) and report.rows == 42
    assert len(index) == 42 and [int(r["row"]) for r in index] == list(range(42))
    assert [r["source"] for r in index[:21]] == [str(p) for p in paths]
    assert all(r["source"] == str(video) and int(r["frame"]) == i for i, r in enumerate(index[21:]))
    assert float(index[30]["time_s"]) == pytest.approx(0.9)
    assert [s.source for s in report.skipped] == [str(tmp_path / "digits" / "broken.png")]
    # Row i is the model applied to what row i of the index names, rebuilt independently, one at a time.
    pre = preprocess_for(backend)
    for i, row in enumerate(index):
        if row["frame"]:
            x = prepare_frame(read_frame(row["source"], int(row["frame"])), pre)
        else:
            x = load_image(row["source"], pre)
        np.testing.assert_allclose(feats[i], backend.encode(x[None])[0], rtol=1e-4, atol=1e-5)
    # The lossless video holds the same digits as the files: the same features, row for row.
    np.testing.assert_allclose(feats[21:], feats[:21], rtol=1e-4, atol=1e-5)
    assert np.linalg.norm(feats[0] - feats[1]) > 1e-2  # different digits, different rows


def test_feature_kinds_and_worker_count_independence(tmp_path, backend):
    write_digit_files(tmp_path / "d", 10)
    runs = {}
    for name, kind, workers in (("mean1", "mean", 1), ("mean3", "mean", 3), ("paper", "paper", 2),
                                ("z", "z", 2)):
        encode_to_npy(backend, [str(tmp_path / "d")], tmp_path / f"{name}.npy", kind=kind, batch_size=4,
                      workers=workers, progress=False)
        runs[name] = np.load(tmp_path / f"{name}.npy")
    np.testing.assert_array_equal(runs["mean1"], runs["mean3"])  # order never depends on the thread count
    assert runs["paper"].shape == (10, backend.meta.feature_dim)
    assert runs["z"].shape == (10, 4) and not np.allclose(runs["z"], runs["mean1"], atol=1e-3)


def test_nothing_usable_writes_nothing(tmp_path, backend):
    from alitool.errors import UserError

    (tmp_path / "empty").mkdir()
    out = tmp_path / "feats.npy"
    with pytest.raises(UserError, match="nothing to encode"):
        encode_to_npy(backend, [str(tmp_path / "empty")], out, progress=False)
    assert list(tmp_path.iterdir()) == [tmp_path / "empty"]


@pytest.mark.slow
def test_interrupted_run_leaves_previous_output_untouched(tmp_path, tiny_model):
    """SIGTERM (what `kill` and job schedulers send) mid-run; Ctrl-C takes the same path after the handler."""
    clip = tmp_path / "long.avi"
    writer = cv2.VideoWriter(str(clip), cv2.VideoWriter_fourcc(*"MJPG"), 25, (32, 32))
    for i in range(4000):
        writer.write(np.full((32, 32, 3), i % 256, np.uint8))
    writer.release()
    out = tmp_path / "feats.npy"
    out.write_bytes(b"previous run")
    (tmp_path / "feats.index.csv").write_text("previous index")
    cmd = [sys.executable, "-c", "from alitool.cli import main; main()", "encode", str(clip), "--out", str(out),
           "--model", str(tiny_model), "--batch-size", "1", "--workers", "1"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not list(tmp_path.glob(".feats.npy.*.tmp")):  # rows are being written
        assert proc.poll() is None and time.time() < deadline, proc.communicate()
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    assert "interrupted" in stderr and "Traceback" not in stderr
    assert out.read_bytes() == b"previous run"
    assert (tmp_path / "feats.index.csv").read_text() == "previous index"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["feats.index.csv", "feats.npy", "long.avi"]
    # the one line names the output it did not write, and nothing claims a finished encode
    assert f"interrupted: {out} was not written" in stderr and "wrote" not in stdout, (stdout, stderr)


def test_a_runtime_error_in_the_model_is_one_line():
    from alitool.encoding.batching import call_model
    from alitool.errors import UserError

    conv = torch.nn.Conv2d(3, 4, 3)
    with pytest.raises(UserError, match=r"^the model failed: RuntimeError: .*channels") as err:
        call_model(conv, torch.zeros(1, 5, 8, 8))  # a real shape error, raised by torch itself
    assert "\n" not in str(err.value)
