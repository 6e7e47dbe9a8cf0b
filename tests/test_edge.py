"""The inference-only install (``pip install "alitool[edge]"``: no torch, no training stack): the RUN commands
work on exported ONNX files without importing torch, and the training commands say in one line what to install.

The commands run in subprocesses whose import system hides the training stack: every finder on sys.meta_path is
wrapped so that torch, scikit-learn, SciPy, matplotlib, ONNX, onnxscript and PyYAML are neither importable nor
found by ``importlib.util.find_spec`` or ``importlib.metadata``, as on a machine where they were never installed.
The files they read were written here by the real export. (.ci/run also runs this path in a real edge venv.)
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import read_index, save_tiny_model, write_digit_files

from alitool.contract.names import DECODER_ONNX, ENCODER_ONNX
from alitool.errors import UserError
from alitool.install import TRAINING_STACK, onnxruntime_conflict, require_training_stack

HIDDEN_MODULES = sorted(TRAINING_STACK)
HIDDEN_DISTRIBUTIONS = sorted(TRAINING_STACK.values())

# Run as `python -c EDGE_PRELUDE ARGS...`: `alitool ARGS` with the modules and distributions of $EDGE_HIDDEN (JSON)
# hidden; which of the training stack's modules were imported is written as JSON to $EDGE_REPORT when the command
# exits (any exit: click ends with sys.exit).
EDGE_PRELUDE = """
import importlib.util, json, os, sys

HIDDEN, HIDDEN_DISTS, WATCHED = (set(names) for names in json.loads(os.environ["EDGE_HIDDEN"]))


class Hide:
    def __init__(self, inner):
        self.inner = inner

    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in HIDDEN:
            return None
        find = getattr(self.inner, "find_spec", None)
        return find(name, path, target) if find else None

    def find_distributions(self, *args, **kwargs):
        find = getattr(self.inner, "find_distributions", None)
        found = find(*args, **kwargs) if find else []
        return [d for d in found if (d.metadata["Name"] or "").lower() not in HIDDEN_DISTS]

    def invalidate_caches(self):
        if hasattr(self.inner, "invalidate_caches"):
            self.inner.invalidate_caches()


sys.meta_path[:] = [Hide(finder) for finder in sys.meta_path]
sys.argv = ["alitool", *sys.argv[1:]]
try:
    from alitool.cli import main

    main()
finally:
    loaded = sorted({m.partition(".")[0] for m in sys.modules} & WATCHED)
    with open(os.environ["EDGE_REPORT"], "w") as f:
        json.dump({"loaded": loaded, "torch_findable": importlib.util.find_spec("torch") is not None}, f)
"""


def edge_alitool(*args, cwd: Path, hide: bool = True) -> tuple[subprocess.CompletedProcess, dict]:
    """``alitool ARGS`` in ``cwd`` as on an edge install (``hide=False``: as on this full install); (the finished
    process, which modules of the training stack it imported)."""
    hidden = [HIDDEN_MODULES, HIDDEN_DISTRIBUTIONS] if hide else [[], []]
    report = cwd / "edge-report.json"
    report.unlink(missing_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "ALITOOL_OFFLINE": "1", "EDGE_REPORT": str(report),
           "EDGE_HIDDEN": json.dumps([*hidden, HIDDEN_MODULES])}
    result = subprocess.run([sys.executable, "-c", EDGE_PRELUDE, *map(str, args)], cwd=cwd, capture_output=True,
                            text=True, env=env, timeout=120)
    return result, json.loads(report.read_text())


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A folder with runs/tiny/{checkpoint.pt, export/encoder.onnx, export/decoder.onnx} (the real export, in this
    process) and six digit PNGs in pngs/."""
    from alitool.export.pipeline import ExportOptions, export_checkpoint

    root = tmp_path_factory.mktemp("edge")
    checkpoint = save_tiny_model(root / "runs" / "tiny" / "checkpoint.pt")
    export_checkpoint(checkpoint, ExportOptions(exporter="torchscript"), log=lambda _: None)
    assert (root / "runs" / "tiny" / "export" / ENCODER_ONNX).is_file()
    assert (root / "runs" / "tiny" / "export" / DECODER_ONNX).is_file()
    write_digit_files(root / "pngs", 6)
    return root


@pytest.mark.slow
def test_the_prelude_hides_the_training_stack(exported):
    result, imported = edge_alitool("--version", cwd=exported)
    assert result.returncode == 0, result.stderr
    assert imported == {"loaded": [], "torch_findable": False}
    assert "torch: not installed" in result.stdout and "onnxruntime " in result.stdout


@pytest.mark.slow
@pytest.mark.parametrize("args, wrote", [
    (["doctor"], None),
    (["encode", "pngs", "--out", "feats.npy"], "feats.npy"),  # the default model: the newest export
    (["encode", "pngs", "--model", "runs/tiny/export", "--features", "z", "--seed", "3", "--out", "z.npy"], "z.npy"),
    (["reconstruct", "pngs", "--model", "runs/tiny/export", "--out", "recon.png"], "recon.png"),
    (["interpolate", "pngs/digit_000.png", "pngs/digit_001.png", "--model", "runs/tiny/export", "--out",
      "interp.png"], "interp.png"),
    (["sample", "--n", "16", "--model", "runs/tiny/export", "--out", "samples.png"], "samples.png"),
], ids=["doctor", "encode", "encode-z-seed", "reconstruct", "interpolate", "sample"])
def test_running_commands_work_without_torch(exported, args, wrote):
    result, imported = edge_alitool(*args, cwd=exported)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    assert imported["loaded"] == [], f"{args[0]} imported {imported['loaded']} on an edge install"
    if wrote is None:
        assert "torch: not installed" in result.stdout
        return
    out = exported / wrote
    assert out.is_file() and out.stat().st_size > 0
    if wrote.endswith(".npy"):
        feats = np.load(out)
        assert feats.shape == (6, 4) and np.isfinite(feats).all()
        assert len(read_index(out.with_name(out.stem + ".index.csv"))) == 6
        out.unlink()
    else:
        import cv2

        assert cv2.imread(str(out)) is not None


@pytest.mark.slow
@pytest.mark.parametrize("args", [
    ["train", "digits", "--max-steps", "1"],
    ["export", "runs/tiny"],
    ["eval", "svm", "runs/tiny"],
    ["eval", "classify", "runs/tiny"],
    ["experiment", "mixture", "--runs", "1"],
], ids=["train", "export", "eval-svm", "eval-classify", "experiment"])
def test_training_commands_say_what_to_install(exported, args):
    result, imported = edge_alitool(*args, cwd=exported)
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert result.stderr.strip().splitlines() == [
        f'error: alitool {" ".join(args[: 2 if args[0] in ("eval", "experiment") else 1])} needs the training stack '
        '(PyTorch, not installed here): pip install "alitool[cpu]" (or "alitool[gpu]" on an NVIDIA GPU)']
    assert imported["loaded"] == []
    assert sorted(p.name for p in (exported / "runs").iterdir()) == ["tiny"]  # nothing started, nothing written


@pytest.mark.slow
def test_a_checkpoint_on_an_edge_install_asks_for_the_training_stack_or_the_export(exported):
    result, imported = edge_alitool("encode", "pngs", "--model", "runs/tiny/checkpoint.pt", "--out", "f.npy",
                                    cwd=exported)
    assert result.returncode == 2 and imported["loaded"] == []
    assert result.stderr.strip().splitlines() == [
        'error: runs/tiny/checkpoint.pt: opening it needs the training stack (PyTorch), which is not installed: '
        'pip install "alitool[cpu]" (or "alitool[gpu]" on an NVIDIA GPU), or give its ONNX export (alitool export)']
    assert not (exported / "f.npy").exists()


@pytest.mark.slow
@pytest.mark.parametrize("args", [
    ["--version"],
    ["sample", "--n", "4", "--model", "runs/tiny/export", "--out", "s.png"],
    ["interpolate", "pngs/digit_000.png", "pngs/digit_001.png", "--model", "runs/tiny/export", "--out", "i.png"],
], ids=["version", "sample", "interpolate"])
def test_version_and_onnx_commands_never_import_torch_even_when_installed(exported, args):
    """Start-up: torch's import alone takes seconds; --version and the ONNX picture commands start in well under
    one (README, Installing), on a full install too."""
    result, imported = edge_alitool(*args, cwd=exported, hide=False)
    assert result.returncode == 0, result.stderr
    assert imported["loaded"] == [] and imported["torch_findable"]
    if args == ["--version"]:
        assert "installed (alitool doctor checks CUDA)" in result.stdout


def test_require_training_stack_names_what_is_missing(monkeypatch):
    require_training_stack("alitool train")  # this install has everything
    monkeypatch.setattr("alitool.install.has_module", lambda name: name not in ("scipy", "yaml"))
    with pytest.raises(UserError, match=r"alitool export needs the training stack \(not installed here: scipy, "
                                        r"pyyaml\): pip install \"alitool\[cpu\]\""):
        require_training_stack("alitool export")


def _fake_distribution(site: Path, name: str, version: str) -> None:
    info = site / f"{name.replace('-', '_')}-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")


def test_both_onnx_runtimes_installed_is_reported_with_the_fix(tmp_path, monkeypatch):
    from importlib import metadata

    from alitool.install import runtime_report

    for dist in ("onnxruntime", "onnxruntime-gpu"):
        try:
            metadata.version(dist)
        except metadata.PackageNotFoundError:
            _fake_distribution(tmp_path, dist, "1.20.0")
    monkeypatch.syspath_prepend(str(tmp_path))
    line = onnxruntime_conflict()
    assert line is not None and "onnxruntime " in line and "onnxruntime-gpu " in line
    assert "pip uninstall -y onnxruntime onnxruntime-gpu" in line
    assert line in runtime_report().splitlines()


def test_one_onnx_runtime_is_no_conflict(monkeypatch):
    monkeypatch.setattr("alitool.install.distribution_version",
                        lambda name: "1.20.0" if name == "onnxruntime" else None)
    assert onnxruntime_conflict() is None
