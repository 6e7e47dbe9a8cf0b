"""`alitool train` end to end, as a user runs it: a real subprocess in a fresh folder."""

import os
import subprocess
import sys
from pathlib import Path

from alitool.checkpoint import load_checkpoint


def alitool(*args, cwd):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "ALITOOL_OFFLINE": "1"}  # never reach for the network
    return subprocess.run([sys.executable, "-m", "alitool.cli", *args], cwd=cwd, capture_output=True, text=True,
                          env=env, timeout=300)


def test_train_digits_max_steps_5_end_to_end(tmp_path):
    result = alitool("train", "digits", "--max-steps", "5", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    run = tmp_path / "runs" / "digits"
    assert "run folder: runs/digits" in result.stderr
    assert load_checkpoint(run / "checkpoint.pt")["step"] == 5
    assert (run / "samples" / "epoch_001.png").is_file() and (run / "config.yaml").is_file()
    assert "samples: runs/digits/samples/epoch_001.png" in result.stdout
    # a second run goes to runs/digits-2; --resume continues the newest
    again = alitool("train", "digits", "--max-steps", "2", cwd=tmp_path)
    assert again.returncode == 0 and (tmp_path / "runs" / "digits-2" / "checkpoint.pt").is_file()
    resumed = alitool("train", "digits", "--resume", "runs/digits", "--max-steps", "7", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed runs/digits/checkpoint.pt at step 5" in resumed.stderr
    assert load_checkpoint(run / "checkpoint.pt")["step"] == 7


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


def test_help_has_examples_and_version_reports_runtimes(tmp_path):
    result = alitool("train", "--help", cwd=tmp_path)
    assert result.returncode == 0 and "alitool train digits" in result.stdout
    version = alitool("--version", cwd=tmp_path)
    assert version.returncode == 0 and "alitool " in version.stdout and "onnxruntime" in version.stdout
    assert Path(tmp_path).is_dir()


def test_missing_data_leaves_no_empty_run_folder(tmp_path):
    result = alitool("train", "svhn", "--data-dir", str(tmp_path / "nothing"), cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "svhn" in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert not (tmp_path / "runs" / "svhn").exists()


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
