"""The default INT8 export is faithful on the CPUs it is deployed to, not only on the one that exported it.

ONNX Runtime's int8 kernels differ by CPU: on x86 without VNNI/AMX they add u8 x s8 products in saturating 16-bit
sums, and a full-range 8-bit file that measured cosine 0.9998 on the export machine returned 0.92 there
(alitool/cpu_features.py, docs/export.md). A small digits model is trained here, exported with the default scheme,
and its z_mean on held-out test images is compared with fp32 under emulation of an AVX2-only x86 CPU and of ARM64
(qemu-user through the cross-cpu tool), by the same eval script as benchmarks/int8_targets.py.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import TINY_DIGITS

from alitool.config import load_config, with_train
from alitool.export.pipeline import ExportOptions, export_checkpoint
from alitool.export.quantize import calibration_set, quantize_encoder, z_mean_fidelity

ROOT = Path(__file__).resolve().parent.parent
# CI lays the shared tools folder beside the repository clone (so do the development machines).
CROSS_CPU = ROOT.parent / "shared" / "tools" / "cross-cpu"
EVAL_SCRIPT = ROOT / "benchmarks" / "int8_targets.py"
QEMU = {"x86-avx2": "qemu-x86_64-static", "aarch64": "qemu-aarch64-static"}


def _skip_without_emulation(target: str) -> None:
    if not CROSS_CPU.is_file():
        pytest.skip(f"no cross-cpu tool at {CROSS_CPU} (the shared tools folder beside the repository)")
    if shutil.which(QEMU[target]) is None and (os.geteuid() != 0 or shutil.which("apt-get") is None):
        pytest.skip(f"{QEMU[target]} is not installed and cross-cpu cannot apt-get it here "
                    f"(apt-get install qemu-user-static mmdebstrap)")


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A few hundred steps of the tiny digits model, its default INT8 export, and the files the eval script reads:
    fp32.onnx, portable.onnx, vnni.onnx (the full-range scheme, as a control) and the held-out test images."""
    import torch

    from alitool.trainers.loop import Trainer

    torch.set_num_threads(1)
    base = tmp_path_factory.mktemp("int8-targets")
    run = base / "runs" / "digits-tiny"
    cfg = with_train(load_config("digits", TINY_DIGITS), max_steps=300, seed=0, device="cpu")
    trainer = Trainer(cfg, run, log=lambda _: None)
    trainer.start_fresh()
    trainer.fit()
    report = export_checkpoint(run, ExportOptions(int8=True, calib="256", exporter="torchscript"), log=lambda _: None)
    assert report.int8_scheme == "portable"
    folder = base / "eval"
    folder.mkdir()
    shutil.copy(run / "export" / "encoder.onnx", folder / "fp32.onnx")
    shutil.copy(run / "export" / "encoder.int8.onnx", folder / "portable.onnx")
    calibration, heldout = calibration_set(cfg, "256")
    assert "test split" in heldout.source
    quantize_encoder(run / "export" / "encoder.onnx", folder / "vnni.onnx", calibration, "vnni")
    np.save(folder / "heldout.npy", heldout.images)
    return folder


@pytest.mark.slow
@pytest.mark.parametrize("target", ["x86-avx2", "aarch64"])
def test_default_int8_is_faithful_under_emulation(exported, target):
    _skip_without_emulation(target)
    script = [str(EVAL_SCRIPT), "--eval", str(exported), "--label", target]
    command = [str(CROSS_CPU), target, *([sys.executable] if target == "x86-avx2" else []), *script]
    result = subprocess.run(command, capture_output=True, text=True, timeout=900,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    if result.returncode == 2 and "cross-cpu:" in result.stderr:  # its own setup failed (apt, mmdebstrap, pip)
        pytest.skip(result.stderr.strip().splitlines()[-1])
    assert result.returncode == 0, result.stderr[-2000:]
    fp32, int8, full_range = (np.load(exported / target / f"{name}.npy") for name in ("fp32", "portable", "vnni"))
    fidelity = z_mean_fidelity(fp32, int8, f"digits test split under {target} emulation")
    assert fidelity.images == 359
    assert fidelity.cosine_mean >= 0.99, fidelity.line()
    if target == "x86-avx2":
        # The control: full-range weights saturate AVX2's vpmaddubsw even in this small model (relative error
        # 3.7 % against 0.7 % with 7-bit weights; native VNNI: 0.7 % both). Were it as good as the default, the
        # emulation would not be running ONNX Runtime's AVX2 kernels and the bound above would prove nothing.
        control = z_mean_fidelity(fp32, full_range)
        assert control.relative_error > 2 * fidelity.relative_error, (control.line(), fidelity.line())
