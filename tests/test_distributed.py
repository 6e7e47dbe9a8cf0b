"""DistributedDataParallel on CPU (gloo): a real 2-process run through the CLI, then resumed in 1 process."""

import pytest
import torch
import yaml
from helpers import alitool_subprocess

from alitool.checkpoint import load_checkpoint
from alitool.config import load_config, to_dict


@pytest.mark.slow
def test_two_process_run_resumes_in_one_process_and_has_no_ddp_prefixes(tmp_path, tiny_cfg):
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(to_dict(tiny_cfg)))
    run = tmp_path / "run"
    two = alitool_subprocess("train", config, "--nproc", "2", "--max-steps", "4", "--out", run, cwd=tmp_path,
                             timeout=600)
    assert two.returncode == 0, two.stderr[-3000:]
    assert "2 processes" in two.stderr
    payload = load_checkpoint(run / "checkpoint.pt")
    assert payload["step"] == 4
    for state in payload["models"].values():
        assert not any(k.startswith(("module.", "_orig_mod.")) for k in state)
    one = alitool_subprocess("train", "--resume", run, "--max-steps", "6", cwd=tmp_path, timeout=600)
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
