"""DistributedDataParallel on CPU (gloo): a real 2-process run through the CLI, then resumed in 1 process."""

import os
import subprocess
import sys

import torch
import yaml

from alitool.checkpoint import load_checkpoint
from alitool.config import load_config, to_dict


def test_two_process_run_resumes_in_one_process_and_has_no_ddp_prefixes(tmp_path, tiny_cfg):
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(to_dict(tiny_cfg)))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    run = tmp_path / "run"
    two = subprocess.run([sys.executable, "-m", "alitool.cli", "train", str(config), "--nproc", "2",
                          "--max-steps", "4", "--out", str(run)], capture_output=True, text=True, env=env,
                         timeout=600, cwd=tmp_path)
    assert two.returncode == 0, two.stderr[-3000:]
    assert "2 processes" in two.stderr
    payload = load_checkpoint(run / "checkpoint.pt")
    assert payload["step"] == 4
    for state in payload["models"].values():
        assert not any(k.startswith(("module.", "_orig_mod.")) for k in state)
    one = subprocess.run([sys.executable, "-m", "alitool.cli", "train", "--resume", str(run), "--max-steps", "6"],
                         capture_output=True, text=True, env=env, timeout=600, cwd=tmp_path)
    assert one.returncode == 0, one.stderr[-3000:]
    assert "resumed" in one.stderr and "at step 4" in one.stderr
    assert load_checkpoint(run / "checkpoint.pt")["step"] == 6


def test_speed_switches_train_a_step(tiny_cfg):
    """bf16 autocast and channels_last change how the step computes, not what it updates."""
    from alitool.config import with_train
    from alitool.trainers.ali import ALIGame

    for switches in ({"precision": "bf16"}, {"channels_last": True}, {"precision": "bf16", "channels_last": True}):
        game = ALIGame(with_train(tiny_cfg, **switches), torch.device("cpu"))
        before = [p.detach().clone() for p in game.model.parameters()]
        values = game.step(torch.rand(16, 1, 8, 8))
        assert all(torch.isfinite(v) for v in values.values()), switches
        assert all(not torch.equal(b, p) for b, p in zip(before, game.model.parameters(), strict=True)
                   if p.requires_grad and p.dim() > 1), switches
    # the measured defaults (benchmarks/RESULTS.md): digits pins fp32, image configs ask for auto + channels_last,
    # and auto never picks bf16 for vector data such as the 2-D mixture
    from alitool.trainers.speed import use_bf16

    assert load_config("digits").train.precision == "fp32"
    svhn = load_config("svhn").train
    assert svhn.precision == "auto" and svhn.channels_last
    assert not use_bf16("auto", torch.device("cpu"), images=False)
    assert use_bf16("bf16", torch.device("cpu"), images=False) and not use_bf16("fp32", torch.device("cpu"))
