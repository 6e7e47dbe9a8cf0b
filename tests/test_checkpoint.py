"""Checkpoints are written atomically and read without unpickling anything."""

import signal
import subprocess
import sys
import time

import pytest
import torch

from alitool.checkpoint import clean_state_dict, load_checkpoint, save_checkpoint
from alitool.errors import UserError
from alitool.models import ALI


class Gift:
    """Stands for arbitrary code a malicious checkpoint could carry: unpickling it would import and build it."""


def test_a_checkpoint_carrying_a_pickled_object_is_refused(tmp_path, tiny_cfg):
    path = tmp_path / "evil.pt"
    save_checkpoint(path, cfg=tiny_cfg, models={"encoder": ALI(tiny_cfg).encoder})
    payload = torch.load(path, weights_only=True)
    payload["extra"] = {"gift": Gift()}  # any class outside the allowed tensor types
    torch.save(payload, path)
    with pytest.raises(UserError, match="refused: the file holds pickled objects"):
        load_checkpoint(path)


def test_corrupt_truncated_and_foreign_files_get_one_line_errors(tmp_path, tiny_cfg):
    good = tmp_path / "good.pt"
    save_checkpoint(good, cfg=tiny_cfg, models={"encoder": ALI(tiny_cfg).encoder})
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    text = tmp_path / "notes.pt"
    text.write_text("hello")
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(3)}, foreign)
    for path, message in [(truncated, "not a readable checkpoint"), (text, "not a readable checkpoint"),
                          (foreign, "not an alitool checkpoint"), (tmp_path / "missing.pt", "not found")]:
        with pytest.raises(UserError, match=message) as info:
            load_checkpoint(path)
        assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_wrapper_prefixes_are_stripped():
    state = {"module.a.weight": 1, "_orig_mod.module.b": 2, "c": 3}
    assert clean_state_dict(state) == {"a.weight": 1, "b": 2, "c": 3}


def test_no_temp_files_are_left_behind(tmp_path, tiny_cfg):
    for _ in range(3):
        save_checkpoint(tmp_path / "c.pt", cfg=tiny_cfg, models={"d": ALI(tiny_cfg).discriminator})
    assert [p.name for p in tmp_path.iterdir()] == ["c.pt"]


KILL_SCRIPT = """
import sys, torch
from alitool.config import load_config, with_train
from alitool.trainers.loop import Trainer
sys.path.insert(0, {tests!r})
from conftest import TINY_DIGITS
torch.set_num_threads(1)
cfg = with_train(load_config("digits", TINY_DIGITS), checkpoint_every_steps=1, max_steps=100000, epochs=100000)
t = Trainer(cfg, {run!r})
t.start_fresh()
t.fit()
"""


def test_kill_9_at_any_moment_leaves_a_loadable_checkpoint(tmp_path):
    """Checkpoints every step while the process is SIGKILLed at several moments: each time, the file loads."""
    run = tmp_path / "run"
    script = KILL_SCRIPT.format(tests=str(__import__("pathlib").Path(__file__).parent), run=str(run))
    proc = subprocess.Popen([sys.executable, "-c", script], stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while not (run / "checkpoint.pt").exists():
            assert proc.poll() is None and time.monotonic() < deadline, "training never wrote a checkpoint"
            time.sleep(0.05)
        time.sleep(0.37)  # land somewhere inside a step or a write
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    payload = load_checkpoint(run / "checkpoint.pt")
    assert payload["step"] >= 1
    from alitool.config import with_train
    from alitool.trainers.loop import Trainer

    trainer = Trainer(with_train(payload["config"], max_steps=payload["step"] + 2), run)
    trainer.resume()
    assert trainer.pos.step == payload["step"]
    trainer.fit()
    assert load_checkpoint(run / "checkpoint.pt")["step"] == payload["step"] + 2


def test_random_bytes_are_not_called_pickles(tmp_path):
    path = tmp_path / "noise.pt"
    path.write_bytes(bytes(range(256)) * 8)
    with pytest.raises(UserError, match="not a readable checkpoint"):
        load_checkpoint(path)


def test_artifacts_get_ordinary_permissions(tmp_path, tiny_cfg):
    import os

    save_checkpoint(tmp_path / "c.pt", cfg=tiny_cfg, models={"d": ALI(tiny_cfg).discriminator})
    umask = os.umask(0)
    os.umask(umask)
    assert (tmp_path / "c.pt").stat().st_mode & 0o777 == 0o666 & ~umask
