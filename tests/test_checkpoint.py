"""Checkpoints are written atomically and read without unpickling anything."""

import signal
import subprocess
import sys
from pathlib import Path

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


# The training child SIGKILLs itself at a known point of its third checkpoint write (step 3; one checkpoint per
# step), so every run lands in the write window it names instead of wherever a timer happens to fall.
KILL_SCRIPT = """
import io, os, signal, sys, torch
sys.path.insert(0, {tests!r})
from helpers import TINY_DIGITS
from alitool.config import load_config, with_train
from alitool.trainers.loop import Trainer

MOMENT, KILL_AT = {moment!r}, 3

def die():
    os.kill(os.getpid(), signal.SIGKILL)

real_save, real_replace = torch.save, os.replace

def save(obj, f, *args, **kwargs):
    if MOMENT == "mid-write" and isinstance(obj, dict) and obj.get("step") == KILL_AT:
        buf = io.BytesIO()
        real_save(obj, buf, *args, **kwargs)
        f.write(buf.getvalue()[: len(buf.getvalue()) // 2])  # half of the archive is on disk
        f.flush()
        os.fsync(f.fileno())
        die()
    return real_save(obj, f, *args, **kwargs)

replaced = 0

def replace(src, dst, *args, **kwargs):
    global replaced
    if os.path.basename(dst) != "checkpoint.pt":
        return real_replace(src, dst, *args, **kwargs)
    replaced += 1
    if replaced == KILL_AT and MOMENT == "before-rename":  # the new file is complete, not yet in place
        die()
    real_replace(src, dst, *args, **kwargs)
    if replaced == KILL_AT and MOMENT == "after-rename":
        die()

torch.save, os.replace = save, replace
torch.set_num_threads(1)
cfg = with_train(load_config("digits", TINY_DIGITS), checkpoint_every_steps=1, max_steps=KILL_AT + 3, epochs=100)
t = Trainer(cfg, {run!r}, log=lambda _: None)
t.start_fresh()
t.fit()
"""


@pytest.mark.slow
@pytest.mark.parametrize(("moment", "saved_step"), [("mid-write", 2), ("before-rename", 2), ("after-rename", 3)])
def test_kill_9_inside_a_checkpoint_write_leaves_a_loadable_checkpoint(tmp_path, moment, saved_step):
    """SIGKILL half-way through writing step 3's checkpoint, after writing it and before moving it into place, and
    right after: checkpoint.pt is always a whole checkpoint (step 2's, or step 3's once moved) and training resumes."""
    run = tmp_path / "run"
    script = KILL_SCRIPT.format(tests=str(Path(__file__).parent), run=str(run), moment=moment)
    proc = subprocess.run([sys.executable, "-c", script], stderr=subprocess.PIPE, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]  # it died where the hook says, not earlier
    payload = load_checkpoint(run / "checkpoint.pt")
    assert payload["step"] == saved_step
    from alitool.config import with_train
    from alitool.trainers.loop import Trainer

    trainer = Trainer(with_train(payload["config"], max_steps=payload["step"] + 2), run, log=lambda _: None)
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
