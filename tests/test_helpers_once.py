"""The small helpers every stage shares, each with one home: ``errors.one_line``, the atomic writes of
``alitool.atomic`` and the padded fixed-size model call of ``alitool.encoding.batching``."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from alitool.atomic import atomic_write_bytes, commit, discard, temp_beside
from alitool.encoding.batching import padded_calls
from alitool.errors import UserError, one_line


def test_one_line_folds_the_message_and_cuts_at_a_word():
    err = RuntimeError("shape mismatch: [3, 8] vs [4, 8]\n  at some/internal/frame.cpp:12")
    assert one_line(err) == "shape mismatch: [3, 8] vs [4, 8] at some/internal/frame.cpp:12"
    assert one_line("x" * 500 + "\nsecond") == "x" * 196 + " ..."  # no word to cut at: cut in the word
    assert one_line("one two three four", limit=12) == "one two ..."
    assert len(one_line("word " * 100)) <= 200
    assert one_line(ValueError()) == "ValueError"  # an empty message names the error instead
    assert one_line(OSError(""), default="unreadable") == "unreadable"
    assert one_line("") == ""


def test_one_line_keeps_onnxruntimes_detail_and_drops_its_status_prefix():
    import onnxruntime

    session = onnxruntime.InferenceSession(matmul_model(4, 3))
    with pytest.raises(Exception) as caught:
        session.run(None, {"x": np.ones((2, 5), np.float32)})
    line = one_line(caught.value)
    assert not line.startswith("[ONNXRuntimeError]")
    assert "index: 1 Got: 5 Expected: 4" in line, line  # on the message's second line


def matmul_model(n_in: int, n_out: int) -> bytes:
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", n_in])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", n_out])
    w = helper.make_tensor("w", TensorProto.FLOAT, [n_in, n_out], np.ones(n_in * n_out, np.float32))
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g", [x], [y], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString()


def _listing(folder):
    return sorted(p.name for p in folder.iterdir())


def test_a_failing_writer_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "result.bin"
    target.write_bytes(b"old")

    def fail(f):
        f.write(b"half of the new")
        raise RuntimeError("disk on fire")

    with pytest.raises(RuntimeError, match="disk on fire"):
        atomic_write_bytes(target, fail)
    assert target.read_bytes() == b"old"
    assert _listing(tmp_path) == ["result.bin"]

    atomic_write_bytes(target, lambda f: f.write(b"new"))
    assert target.read_bytes() == b"new"
    assert _listing(tmp_path) == ["result.bin"]


def test_a_failing_rename_removes_the_temporary(tmp_path, monkeypatch):
    target = tmp_path / "result.bin"
    target.write_bytes(b"old")

    def no_rename(src, dst):
        raise OSError("read-only file system")

    monkeypatch.setattr(os, "replace", no_rename)
    with pytest.raises(OSError, match="read-only"):
        atomic_write_bytes(target, lambda f: f.write(b"new"))
    assert target.read_bytes() == b"old"
    assert _listing(tmp_path) == ["result.bin"]


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_permissions_follow_the_umask_without_touching_it(tmp_path, monkeypatch, umask):
    real_umask = os.umask
    old = real_umask(umask)
    try:
        # nothing may read or change the umask while writing: it is process-wide and races with other threads
        def no_umask(mask):
            raise AssertionError("os.umask called")

        monkeypatch.setattr(os, "umask", no_umask)
        atomic_write_bytes(tmp_path / "a.bin", lambda f: f.write(b"a"))
        fd, tmp = temp_beside(tmp_path / "b.npy")
        f = os.fdopen(fd, "r+b")
        f.write(b"b")
        commit(tmp, tmp_path / "b.npy", f)
        fd, tmp = temp_beside(tmp_path / "c.avi", ".tmp.avi")
        os.close(fd)
        assert tmp.name.startswith(".c.avi.") and tmp.name.endswith(".tmp.avi")
        tmp.write_bytes(b"c")  # written by someone else (OpenCV), synced and moved here
        commit(tmp, tmp_path / "c.avi")
    finally:
        monkeypatch.undo()
        real_umask(old)
    for name in ("a.bin", "b.npy", "c.avi"):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o666 & ~umask, name
    assert _listing(tmp_path) == ["a.bin", "b.npy", "c.avi"]


def test_discard_leaves_the_target_alone(tmp_path):
    (tmp_path / "out.csv").write_text("previous")
    fd, tmp = temp_beside(tmp_path / "out.csv")
    f = os.fdopen(fd, "w")
    f.write("partial")
    discard(tmp, f)
    assert f.closed and _listing(tmp_path) == ["out.csv"]
    assert (tmp_path / "out.csv").read_text() == "previous"


def test_importing_the_library_changes_no_process_state():
    """No umask toggling (nor torch) at import time: the running side's modules import on a torch-free install."""
    code = (
        "import os, sys\n"
        "def refuse(mask): raise SystemExit('os.umask called at import')\n"
        "os.umask = refuse\n"
        "import alitool.atomic, alitool.viz, alitool.encoding.encode, alitool.io.pictures, alitool.conditional_run\n"
        "assert 'torch' not in sys.modules, 'the running side imported torch'\n"
        "import alitool.checkpoint\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]


def _echo_batches(calls):
    def fn(x, y=None):
        calls.append((x.shape, x.copy()))
        out = x.reshape(len(x), -1).sum(axis=1, keepdims=True)
        return out if y is None else out + y[:, :1]

    return fn


def test_padded_calls_use_one_batch_shape_and_return_only_real_rows():
    calls = []
    x = np.arange(10 * 2, dtype=np.float32).reshape(10, 2) + 1
    out = padded_calls(_echo_batches(calls), x, 4)
    assert [shape for shape, _ in calls] == [(4, 2)] * 3  # 4 + 4 + 2 rows, the last batch padded to 4
    assert np.array_equal(calls[-1][1][2:], np.zeros((2, 2), np.float32))  # padding is zeros
    assert out.shape == (10, 1) and out.dtype == np.float32
    assert np.array_equal(out[:, 0], x.sum(axis=1))


def test_padded_calls_pad_every_array_alike():
    calls = []
    x = np.ones((5, 3), np.float32)
    y = np.arange(5, dtype=np.float32)[:, None].repeat(2, axis=1)
    out = padded_calls(_echo_batches(calls), (x, y), 3)
    assert out.shape == (5, 1)
    assert np.array_equal(out[:, 0], 3 + np.arange(5, dtype=np.float32))


def test_padded_calls_edge_cases():
    assert padded_calls(_echo_batches([]), np.zeros((0, 2), np.float32), 4).shape == (0,)
    with pytest.raises(UserError, match="batch-size"):
        padded_calls(_echo_batches([]), np.zeros((3, 2), np.float32), 0)

    def broken(x):
        raise RuntimeError("CUDA out of memory.\nTried to allocate ...")

    with pytest.raises(UserError) as caught:
        padded_calls(broken, np.zeros((3, 2), np.float32), 2)
    assert str(caught.value) == "the model failed: RuntimeError: CUDA out of memory. Tried to allocate ..."
