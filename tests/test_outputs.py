"""Writers that never lose good data (``alitool.outputs``, ``alitool.atomic``): every output path that cannot be
written is one line and exit status 2 before any work; the .npy and its index land as one step; two processes on
one output cannot both write it; a killed writer's temporaries are removed by the next writer of that folder.

Each case runs the CLI (in this process through click's runner, or as real processes where two must run at once)
and checks the one line, the exit status, that previous outputs are intact and that no temporary is left."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from helpers import TINY_DIGITS, digit_images, invoke_cli, read_index, save_tiny_model

from alitool.errors import UserError

# alitool.outputs and alitool.atomic.commit_together are imported inside the tests that use them, so that the CLI
# cases also run (and fail) against a tree without them.


def lock_path(path: Path) -> Path:
    """Where ``alitool.outputs`` locks ``path``: ``.<name>.lock`` beside it."""
    return path.with_name(f".{path.name}.lock")


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return save_tiny_model(tmp_path_factory.mktemp("model") / "checkpoint.pt")


@pytest.fixture
def images(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    for i, image in enumerate(digit_images(20)):
        assert cv2.imwrite(str(folder / f"{i:02d}.png"), image)
    return folder


@pytest.fixture
def read_only(tmp_path):
    """A folder no one may create files in: mode 555, or for root (whom modes do not stop) the immutable
    attribute, which stops root too (and which ``os.access`` does not see: only a real probe does)."""
    folder = tmp_path / "ro"
    folder.mkdir()
    root = os.geteuid() == 0
    if root:
        if subprocess.run(["chattr", "+i", str(folder)], capture_output=True).returncode != 0:
            pytest.skip("chattr +i is not available here")
    else:
        folder.chmod(0o555)
    try:
        try:
            (folder / "probe").touch()
        except OSError:
            yield folder
        else:
            pytest.skip("this sandbox lets the process write in a read-only folder")
    finally:
        if root:
            subprocess.run(["chattr", "-i", str(folder)], capture_output=True)
        else:
            folder.chmod(0o755)


def error_line(result) -> str:
    """The command's one error line (exit status 2, no traceback)."""
    assert result.exit_code == 2, (result.output, result.exception)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


def leftovers(folder: Path) -> list[str]:
    """alitool's hidden temporaries, backups and lock files in ``folder`` (recursively)."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob(".*") if p.suffix in (".tmp", ".bak", ".lock")
                  or ".tmp" in p.name)


def encode_pair(images: Path, model: Path, out: Path, n: int) -> None:
    result = invoke_cli("encode", *sorted(images.iterdir())[:n], "--out", out, "--model", model, "--no-progress")
    assert result.exit_code == 0, result.output
    assert np.load(out).shape[0] == n


# -- case 1: output paths that cannot be written: one line before any work ------------------------------------

@pytest.mark.parametrize("command", ["encode", "reconstruct", "reconstruct-video", "sample", "interpolate"])
def test_read_only_out_folder_is_one_line(read_only, images, model, command):
    first, second = sorted(images.iterdir())[:2]
    args = {"encode": ["encode", images, "--out", read_only / "f.npy"],
            "reconstruct": ["reconstruct", images, "--out", read_only / "r.png"],
            "reconstruct-video": ["reconstruct", images, "--out", read_only / "r.mp4"],
            "sample": ["sample", "--out", read_only / "s.png"],
            "interpolate": ["interpolate", first, second, "--out", read_only / "i.png"]}[command]
    line = error_line(invoke_cli(*args, "--model", model))
    assert f"cannot write in {read_only} (permission denied)" in line
    assert "OpenCV" not in line
    assert not list(read_only.iterdir())


def test_read_only_parent_of_a_folder_to_create(read_only, images, model):
    line = error_line(invoke_cli("encode", images, "--out", read_only / "sub" / "f.npy", "--model", model))
    assert f"cannot write in {read_only}" in line


def test_encode_out_naming_an_existing_folder_fails_before_encoding(tmp_path, images, model):
    out = tmp_path / "o" / "f.npy"
    out.mkdir(parents=True)
    line = error_line(invoke_cli("encode", images, "--out", out, "--model", model))
    assert line == f"error: --out {out}: is an existing folder; give a file name"
    assert not list(out.iterdir()) and not leftovers(tmp_path / "o")
    assert "model:" not in invoke_cli("encode", images, "--out", out, "--model", model).output  # before the model


def test_encode_out_without_a_name_is_told_so(tmp_path, images, model):
    line = error_line(invoke_cli("encode", images, "--out", tmp_path / "o" / ".npy", "--model", model))
    assert "needs a name before .npy" in line and "must end in .npy" not in line


def test_an_input_is_never_the_output(tmp_path, images, model):
    target = sorted(images.iterdir())[0]
    before = target.read_bytes()
    line = error_line(invoke_cli("reconstruct", target, "--out", target, "--model", model))
    assert "is also an input" in line
    line = error_line(invoke_cli("interpolate", f"{target}", sorted(images.iterdir())[1], "--out", target,
                                 "--model", model))
    assert "is also an input" in line
    assert target.read_bytes() == before


def test_export_out_read_only_or_a_file(tmp_path, read_only, model):
    line = error_line(invoke_cli("export", model, "--out", read_only / "e", "--exporter", "torchscript"))
    assert f"cannot write in {read_only}" in line
    a_file = tmp_path / "afile"
    a_file.write_text("keep")
    line = error_line(invoke_cli("export", model, "--out", a_file, "--exporter", "torchscript"))
    assert "is a file, not a folder" in line
    assert a_file.read_text() == "keep"


def tiny_train_args() -> list[str]:
    return [arg for override in TINY_DIGITS for arg in ("--set", override)]


def test_train_out_naming_a_file_or_a_read_only_folder(tmp_path, read_only):
    a_file = tmp_path / "afile"
    a_file.write_text("keep")
    line = error_line(invoke_cli("train", "digits", "--out", a_file, "--max-steps", "1", *tiny_train_args()))
    assert line == f"error: --out {a_file}: is a file, not a folder; name a folder"
    assert a_file.read_text() == "keep"
    line = error_line(invoke_cli("train", "digits", "--out", read_only / "run", "--max-steps", "1",
                                 *tiny_train_args()))
    assert f"cannot write in {read_only}" in line


def test_new_run_dir_under_a_file_is_one_line(tmp_path):
    from alitool.runs import new_run_dir

    (tmp_path / "runs").write_text("not a folder")
    with pytest.raises(UserError, match="is a file, not a folder"):
        new_run_dir("digits", tmp_path / "runs")


# -- case 2: the .npy and its index land as one step ------------------------------------------------------------

def test_a_folder_under_the_index_name_keeps_the_previous_pair(tmp_path, images, model):
    out = tmp_path / "o" / "p.npy"
    encode_pair(images, model, out, 20)
    index = out.with_name("p.index.csv")
    index.unlink()
    index.mkdir()
    line = error_line(invoke_cli("encode", sorted(images.iterdir())[0], "--out", out, "--model", model))
    assert f"{index}: is an existing folder" in line
    assert np.load(out).shape == (20, 4)  # before: the old 20 rows became 1 row
    assert not leftovers(tmp_path / "o")


def test_commit_together_restores_the_first_file_when_the_second_rename_fails(tmp_path):
    from alitool.atomic import commit_together, temp_beside

    index, npy = tmp_path / "p.index.csv", tmp_path / "p.npy"
    index.write_text("old index")
    npy.mkdir()  # a rename of a file over a non-empty folder fails
    (npy / "x").write_text("")
    temps = []
    for target, text in ((index, "new index"), (npy, "new npy")):
        fd, tmp = temp_beside(target)
        os.write(fd, text.encode())
        os.close(fd)
        temps.append((tmp, target, None))
    with pytest.raises(OSError):
        commit_together(temps)
    assert index.read_text() == "old index"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.index.csv", "p.npy"]


def test_commit_together_lands_both(tmp_path):
    from alitool.atomic import commit_together, temp_beside

    items = []
    for name in ("a.csv", "a.npy"):
        (tmp_path / name).write_text("old")
        fd, tmp = temp_beside(tmp_path / name)
        os.write(fd, b"new")
        os.close(fd)
        items.append((tmp, tmp_path / name, None))
    commit_together(items)
    assert [(tmp_path / n).read_text() for n in ("a.csv", "a.npy")] == ["new", "new"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.csv", "a.npy"]


# -- locks and stale temporaries, in this process ---------------------------------------------------------------

def test_claim_is_reentrant_and_leaves_nothing(tmp_path):
    from alitool.outputs import claim

    out = tmp_path / "o" / "f.npy"
    first = claim(out)
    second = claim(out)
    assert second is first and lock_path(out).is_file()
    assert f"pid {os.getpid()}" in lock_path(out).read_text()
    second.release()
    assert lock_path(out).is_file()
    first.release()
    assert not (tmp_path / "o").exists()  # the folder it created for nothing is gone too


def test_claim_removes_stale_temporaries_of_its_names_and_of_free_locks(tmp_path):
    from alitool.outputs import claim

    stale = [tmp_path / ".f.npy.0123abcd.tmp", tmp_path / ".f.index.csv.89abcdef.tmp",
             tmp_path / ".g.mp4.00112233.tmp.mp4", tmp_path / ".g.mp4.lock"]
    for path in stale:
        path.write_bytes(b"x" * 10)
        os.utime(path, (time.time() - 60, time.time() - 60))
    kept = [tmp_path / ".h.npy.44556677.tmp", tmp_path / "f.npy.notours.tmp", tmp_path / "data.csv"]
    for path in kept:  # h.npy has no lock file: maybe a writer that does not lock; never ours to remove
        path.write_bytes(b"y")
    with claim(tmp_path / "f.npy", also=[tmp_path / "f.index.csv"]):
        assert not any(p.exists() for p in stale)
    assert all(p.exists() for p in kept)


def test_check_destination_parent_is_a_file(tmp_path):
    from alitool.outputs import check_destination

    (tmp_path / "x").write_text("")
    with pytest.raises(UserError, match="is a file, not a folder"):
        check_destination(tmp_path / "x" / "f.npy")


# -- case 5 and 12: real processes --------------------------------------------------------------------------------

def start(*args, cwd) -> subprocess.Popen:
    environ = {**os.environ, "OMP_NUM_THREADS": "1", "ALITOOL_OFFLINE": "1"}
    return subprocess.Popen([sys.executable, "-m", "alitool.cli", *map(str, args)], cwd=cwd, env=environ,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def run_cli(*args, cwd) -> subprocess.CompletedProcess:
    environ = {**os.environ, "OMP_NUM_THREADS": "1", "ALITOOL_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "alitool.cli", *map(str, args)], cwd=cwd, env=environ,
                          capture_output=True, text=True, timeout=300)


def wait_for(proc: subprocess.Popen, found, what: str, timeout: float = 90.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        hit = found()
        if hit:
            return hit
        if proc.poll() is not None:
            pytest.fail(f"the first process ended (status {proc.returncode}) before {what}: {proc.stderr.read()}")
        time.sleep(0.01)
    proc.kill()
    pytest.fail(f"no {what} within {timeout} s")


def long_list(tmp_path: Path, images: Path, n: int) -> Path:
    listing = tmp_path / "many.txt"
    listing.write_text("\n".join([str(sorted(images.iterdir())[0])] * n) + "\n")
    return listing


def while_first_holds_the_lock(first, output: Path, *args, cwd: Path):
    """Run ``alitool *args`` while the process ``first`` holds ``output``'s lock, mid-run (paused with SIGSTOP for
    as long as the second takes); then let ``first`` finish and check it succeeded. Returns the second's result."""
    lock = lock_path(output)
    wait_for(first, lambda: lock.is_file() and "pid" in lock.read_text(), f"{output}'s lock file")
    first.send_signal(signal.SIGSTOP)
    try:
        second = run_cli(*args, cwd=cwd)
    finally:
        first.send_signal(signal.SIGCONT)
    _, err = first.communicate(timeout=300)
    assert first.returncode == 0, err
    return second


@pytest.mark.slow
def test_two_encodes_of_one_output(tmp_path, images, model):
    out = tmp_path / "o" / "p.npy"
    first = start("encode", long_list(tmp_path, images, 3000), "--out", out, "--model", model, "--workers", "1",
                  cwd=tmp_path)
    second = while_first_holds_the_lock(first, out, "encode", images, "--out", out, "--model", model, cwd=tmp_path)
    assert second.returncode == 2, second.stderr
    lines = second.stderr.strip().splitlines()
    assert len(lines) == 1 and f"another alitool process is writing it (pid {first.pid}," in lines[0], lines
    assert np.load(out).shape == (3000, 4) and len(read_index(out.with_name("p.index.csv"))) == 3000
    assert not leftovers(tmp_path / "o")


@pytest.mark.slow
def test_two_trainings_of_one_run_folder(tmp_path):
    run_dir = tmp_path / "runs" / "same"
    first = start("train", "digits", "--out", run_dir, "--max-steps", "60", *tiny_train_args(), cwd=tmp_path)
    second = while_first_holds_the_lock(first, run_dir, "train", "digits", "--out", run_dir, "--max-steps", "2",
                                        *tiny_train_args(), cwd=tmp_path)
    assert second.returncode == 2, second.stderr
    lines = second.stderr.strip().splitlines()
    assert len(lines) == 1 and f"(pid {first.pid}," in lines[0], lines
    from alitool.checkpoint import load_checkpoint

    assert load_checkpoint(run_dir / "checkpoint.pt")["step"] == 60  # the first run's checkpoint is whole
    assert not leftovers(tmp_path / "runs")


@pytest.mark.slow
def test_sigkill_during_encode_leaves_temporaries_the_next_writer_removes(tmp_path, images, model):
    out = tmp_path / "o" / "p.npy"
    encode_pair(images, model, out, 5)
    first = start("encode", long_list(tmp_path, images, 3000), "--out", out, "--model", model, "--workers", "1",
                  cwd=tmp_path)
    wait_for(first, lambda: list(out.parent.glob(".p.npy.*.tmp")), "the preallocated .npy temporary")
    first.kill()
    first.wait()
    assert leftovers(out.parent)  # what SIGKILL leaves: nothing can run in the killed process
    assert np.load(out).shape == (5, 4)  # the previous pair is untouched
    done = run_cli("encode", images, "--out", out, "--model", model, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert np.load(out).shape == (20, 4)
    assert not leftovers(out.parent)


KILL_BETWEEN_RENAMES = """
import os, signal, sys
from pathlib import Path
from alitool import atomic
from alitool.atomic import commit_together, temp_beside

folder = Path(sys.argv[1])
real_replace = os.replace

def replace_then_die(src, dst):  # the crash point: SIGKILL right after the first target's rename
    real_replace(src, dst)
    if Path(dst).name == "p.index.csv":
        os.kill(os.getpid(), signal.SIGKILL)

atomic.os.replace = replace_then_die
items = []
for name, text in (("p.index.csv", "new index"), ("p.npy", "new npy")):
    fd, tmp = temp_beside(folder / name)
    os.write(fd, text.encode())
    os.close(fd)
    items.append((tmp, folder / name, None))
commit_together(items)
"""


def test_a_pair_killed_between_its_renames_is_finished_by_the_next_writer(tmp_path):
    from alitool.atomic import journal_path
    from alitool.outputs import claim

    index, npy = tmp_path / "p.index.csv", tmp_path / "p.npy"
    index.write_text("old index")
    npy.write_text("old npy")
    child = subprocess.run([sys.executable, "-c", KILL_BETWEEN_RENAMES, str(tmp_path)], capture_output=True)
    assert child.returncode == -signal.SIGKILL, child.stderr
    # what the kill left: the new index beside the old .npy, and the journal naming the .npy's temporary
    assert (index.read_text(), npy.read_text()) == ("new index", "old npy")
    assert journal_path(npy).is_file()
    with claim(npy, also=[index]):
        assert (index.read_text(), npy.read_text()) == ("new index", "new npy")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.index.csv", "p.npy"]


def test_a_journal_whose_temporaries_are_gone_changes_nothing(tmp_path):
    from alitool.atomic import finish_interrupted_commit, journal_path

    npy = tmp_path / "p.npy"
    npy.write_text("npy")
    journal_path(npy).write_text('[[".p.npy.0badc0de.tmp", "p.npy"], ["../escape", "x"]]')
    assert finish_interrupted_commit(npy)
    assert npy.read_text() == "npy" and not journal_path(npy).exists()
    assert not finish_interrupted_commit(npy)
