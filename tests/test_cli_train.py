"""`alitool train` end to end, as a user runs it: a real subprocess in a fresh folder."""

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import alitool_subprocess as alitool

from alitool.checkpoint import load_checkpoint

# Every test that starts the CLI in a fresh Python process is marked slow (the fast tier leaves them out).


@pytest.mark.slow
def test_train_digits_max_steps_5_end_to_end(tmp_path):
    result = alitool("train", "digits", "--max-steps", "5", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    run = tmp_path / "runs" / "digits"
    assert "run folder: runs/digits" in result.stderr
    assert load_checkpoint(run / "checkpoint.pt")["step"] == 5
    assert (run / "samples" / "epoch_001.png").is_file() and (run / "config.yaml").is_file()
    assert "samples: runs/digits/samples/epoch_001.png" in result.stdout
    assert "conv paths (" in result.stderr  # how the convolutions run, told once the first step has
    # a second run goes to runs/digits-2; --resume continues the newest
    again = alitool("train", "digits", "--max-steps", "2", cwd=tmp_path)
    assert again.returncode == 0 and (tmp_path / "runs" / "digits-2" / "checkpoint.pt").is_file()
    resumed = alitool("train", "digits", "--resume", "runs/digits", "--max-steps", "7", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed runs/digits/checkpoint.pt at step 5" in resumed.stderr
    assert load_checkpoint(run / "checkpoint.pt")["step"] == 7


@pytest.mark.slow
def test_bad_input_gives_one_line_and_non_zero_exit(tmp_path):
    cases = [
        (["train", "svhm"], "did you mean 'svhn'"),
        (["train", "digits", "--set", "train.lr=fast"], "expects float"),
        (["train", "digits", "--set", "trian.lr=1"], "did you mean 'train'"),
        (["train", "digits", "--resume", "runs/none"], "runs/none/checkpoint.pt: checkpoint not found"),
    ]
    for args, message in cases:
        result = alitool(*args, cwd=tmp_path)
        assert result.returncode == 2, (args, result.stderr)
        assert message in result.stderr and "Traceback" not in result.stderr, (args, result.stderr)
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr


@pytest.mark.slow
def test_help_has_examples_and_version_reports_runtimes(tmp_path):
    result = alitool("train", "--help", cwd=tmp_path)
    assert result.returncode == 0 and "alitool train digits" in result.stdout
    version = alitool("--version", cwd=tmp_path)
    assert version.returncode == 0 and "alitool " in version.stdout and "onnxruntime" in version.stdout
    assert list(tmp_path.iterdir()) == []  # asking for help or the version writes nothing (no runs/ folder)


def test_max_steps_0_writes_the_untrained_networks(tmp_path):
    """--max-steps 0 is the untrained baseline's command (config max_steps 0 means "no limit"): a step-0 checkpoint
    of the initialised networks, the same for the same seed, and one training step changes them."""
    import torch

    weights = {}
    for name, steps in (("a", "0"), ("b", "0"), ("c", "1")):
        result = alitool("train", "digits", "--max-steps", steps, "--seed", "3", "--out", name, "--threads", "1",
                         cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        payload = load_checkpoint(tmp_path / name / "checkpoint.pt")
        assert payload["step"] == int(steps)
        weights[name] = payload["models"]["encoder"]
    assert "untrained" in alitool("train", "digits", "--max-steps", "0", "--out", "d", cwd=tmp_path).stdout
    assert all(torch.equal(weights["a"][k], weights["b"][k]) for k in weights["a"])
    assert not all(torch.equal(weights["a"][k], weights["c"][k]) for k in weights["a"])
    again = alitool("train", "digits", "--resume", "c", "--max-steps", "0", cwd=tmp_path)
    assert again.returncode == 0 and "nothing to do" in again.stdout, again.stderr
    assert load_checkpoint(tmp_path / "c" / "checkpoint.pt")["step"] == 1


@pytest.mark.slow
def test_missing_data_leaves_no_empty_run_folder(tmp_path):
    result = alitool("train", "svhn", "--data-dir", str(tmp_path / "nothing"), cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "svhn" in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert not (tmp_path / "runs" / "svhn").exists()


@pytest.mark.slow
def test_sigterm_saves_a_checkpoint_at_the_current_step_and_exits_130(tmp_path, tiny_cfg):
    import signal
    import time

    import yaml

    from alitool.config import to_dict, with_train

    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(to_dict(with_train(tiny_cfg, checkpoint_every_minutes=60.0, epochs=1000))))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "alitool.cli", "train", str(config), "--out", "run"],
                            cwd=tmp_path, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.monotonic() + 120
    while not (tmp_path / "run" / "config.yaml").exists():  # training has started
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    time.sleep(2.0)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "stopped by SIGTERM at step" in err and "Traceback" not in err
    step = int(err.split("stopped by SIGTERM at step ")[1].split(";")[0])
    assert step >= 1 and load_checkpoint(tmp_path / "run" / "checkpoint.pt")["step"] == step


@pytest.mark.slow
def test_a_bad_choice_fails_when_the_config_loads_and_leaves_no_run_folder(tmp_path):
    cases = [
        ("train.update=alternate", "config key 'train.update' is 'alternate'; expected simultaneous or alternating; "
                                   "did you mean 'alternating'?"),
        ("train.precision=fp8", "config key 'train.precision' is 'fp8'; expected auto, fp32 or bf16; "
                                "did you mean 'fp32'?"),
        ("model.encoder_output=gausian", "config key 'model.encoder_output' is 'gausian'; expected gaussian or "
                                         "deterministic; did you mean 'gaussian'?"),
    ]
    for override, message in cases:
        result = alitool("train", "digits", "--max-steps", "5", "--set", override, cwd=tmp_path)
        assert result.returncode == 2, (override, result.stderr)
        assert result.stderr.strip() == f"error: {message}", result.stderr
        assert list(tmp_path.iterdir()) == []  # failed before a run folder was made


def _tiny_run(config: str, root, steps: int = 2):
    """A real run folder under ``root``, named as `alitool train CONFIG` names it, trained for ``steps`` steps."""
    from alitool.config import load_config, with_train
    from alitool.runs import new_run_dir
    from alitool.trainers.loop import Trainer

    cfg = with_train(load_config(config), max_steps=steps, device="cpu")
    trainer = Trainer(cfg, new_run_dir(cfg.name, root), log=lambda _: None)
    trainer.start_fresh()
    trainer.fit()
    return trainer.run_dir


@pytest.mark.slow
def test_resume_finds_the_runs_of_its_own_config_only(tmp_path):
    own = _tiny_run("mixture25", tmp_path / "runs")
    other = _tiny_run("mixture25_paper", tmp_path / "runs")
    assert (own.name, other.name) == ("mixture25", "mixture25-paper")
    later = (own / "checkpoint.pt").stat().st_mtime + 100
    os.utime(other / "checkpoint.pt", (later, later))  # the other config's run is the newest run of all
    result = alitool("train", "mixture25", "--resume", "--max-steps", "3", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "resumed runs/mixture25/checkpoint.pt at step 2" in result.stderr
    assert load_checkpoint(own / "checkpoint.pt")["step"] == 3
    assert load_checkpoint(other / "checkpoint.pt")["step"] == 2


def test_newest_run_matches_run_names_exactly(tmp_path):
    from alitool.errors import UserError
    from alitool.runs import default_model, is_run_of, newest_run, resolve_model

    assert is_run_of("mixture25", "mixture25") and is_run_of("mixture25-12", "mixture25")
    assert not is_run_of("mixture25-paper", "mixture25") and not is_run_of("mixture25-paper-2", "mixture25")
    assert not is_run_of("mixture2", "mixture25") and not is_run_of("mixture25-", "mixture25")
    assert is_run_of("fashion-mnist-3", "fashion-mnist") and not is_run_of("fashion-mnist", "fashion")
    root = tmp_path / "runs"
    for i, folder in enumerate(["mixture25", "mixture25-2", "mixture25-paper", "mixture250", "digits"]):
        (root / folder).mkdir(parents=True)
        (root / folder / "checkpoint.pt").write_bytes(b"")
        os.utime(root / folder / "checkpoint.pt", (1e9 + i, 1e9 + i))
    (root / "mixture25-3").mkdir()  # no checkpoint: not a run to resume
    assert newest_run(root, name="mixture25") == root / "mixture25-2"
    assert newest_run(root, name="mixture25-paper") == root / "mixture25-paper"
    assert newest_run(root) == root / "digits"
    with pytest.raises(UserError, match="no svhn run .* train one first: alitool train svhn"):
        newest_run(root, name="svhn")
    # the RUN commands' default model: the newest run, or the newest export where ONNX Runtime can open it
    assert default_model(root) == root / "digits"
    assert resolve_model(None, root) == root / "digits" and resolve_model("x.onnx", root) == Path("x.onnx")
    (root / "mixture25" / "export").mkdir()
    (root / "mixture25" / "export" / "encoder.onnx").write_bytes(b"")
    has_onnxruntime = importlib.util.find_spec("onnxruntime") is not None
    assert default_model(root) == (root / "mixture25" / "export" if has_onnxruntime else root / "digits")


def test_run_config_of_a_fresh_and_a_resumed_run(tmp_path):
    from alitool.errors import UserError
    from alitool.runs import NEWEST
    from alitool.trainers.resume import run_config

    root = tmp_path / "runs"
    run = _tiny_run("mixture25", root)
    cfg, run_dir = run_config("mixture25", ["train.lr=1e-3"], {"max_steps": 4}, resume=NEWEST, root=root)
    assert run_dir == run and (cfg.train.lr, cfg.train.max_steps, cfg.train.device) == (1e-3, 4, "cpu")  # saved
    with pytest.raises(UserError, match="a resumed run keeps its networks"):
        run_config("mixture25", ["model.conditional=true"], resume=run)
    with pytest.raises(UserError, match="config key 'train.update' is 'sideways'"):  # checked on resume too
        run_config("mixture25", ["train.update=sideways"], resume=run)
    with pytest.raises(UserError, match="already holds a run; use --resume"):
        run_config("mixture25", out=run)
    fresh, folder = run_config("mixture25", (), {"device": "cpu"}, out=tmp_path / "new")
    assert folder is None and fresh.train.device == "cpu" and not (tmp_path / "new").exists()
