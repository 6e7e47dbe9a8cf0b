"""The 2-D experiment end to end (paper section 4.5): the baseline games, `alitool train mixture25`, and
`alitool experiment mixture` on a few steps, with real checkpoints read back by the PyTorch backend."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from helpers import parameters_changed, parameters_of

from alitool.backends.torch_backend import TorchBackend
from alitool.cli import main
from alitool.config import load_config
from alitool.data.mixture import sample_mixture
from alitool.errors import UserError
from alitool.experiments.mixture_runs import parse_seeds
from alitool.trained_networks import load_networks
from alitool.trainers.baselines import GANGame, InverseMappingGame, PostHocGame, VAEGame

CPU = torch.device("cpu")


def test_inference_baselines_keep_the_gan_decoder_frozen():
    torch.manual_seed(0)
    cfg = load_config("mixture25")
    x = torch.from_numpy(sample_mixture(64, 0)[0])
    gan = GANGame(cfg, CPU)
    gan.step(x)
    state = {k: v.clone() for k, v in gan.decoder.state_dict().items()}
    for cls in (InverseMappingGame, PostHocGame):
        game = cls(cfg, CPU, state)
        enc, dec = game.modules()["encoder"], game.modules()["decoder"]
        enc_before, dec_before = parameters_of(enc), parameters_of(dec)
        game.train(True)
        for _ in range(2):
            out = game.step(x)
        assert all(np.isfinite(float(v)) for v in out.values())
        assert parameters_changed(enc_before, enc), cls.name
        assert not parameters_changed(dec_before, dec), cls.name
        assert not dec.training  # frozen means eval mode too (batch norm statistics stay the GAN's)


def test_vae_uses_a_gaussian_version_of_alis_encoder():
    torch.manual_seed(0)
    game = VAEGame(load_config("mixture25"), CPU)
    assert game.cfg.model.encoder_output == "gaussian" and game.cfg.model.encoder_noise_dim == 0
    assert game.cfg.model.encoder[-1].channels == 4  # (mu, log_sigma) for a 2-D latent
    x = torch.from_numpy(sample_mixture(128, 0)[0])
    losses = [float(game.step(x)["loss_g"]) for _ in range(30)]
    assert np.mean(losses[-5:]) < np.mean(losses[:5])  # the ELBO improves


def test_train_mixture25_writes_an_ordinary_run_that_exports(tmp_path):
    out = tmp_path / "run"
    result = CliRunner().invoke(main, ["train", "mixture25", "--max-steps", "3", "--out", str(out),
                                       "--set", "train.batch_size=32", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert "step 3" in result.output and "conv paths" not in result.output  # MLPs: no convolution to tell about
    backend = TorchBackend(out)
    assert backend.meta.image_size == 0 and backend.meta.input_shape == (2,)
    z = backend.encode(sample_mixture(5, 0)[0])
    assert z.shape == (5, 2) and backend.decode(z).shape == (5, 2)
    np.testing.assert_array_equal(z, backend.encode(sample_mixture(5, 0)[0]))  # "mean" codes: zero noise
    # the MLPs export like the conv nets: ONNX Runtime agrees with PyTorch on the encoder (noise input 0) and decoder
    pytest.importorskip("onnxruntime")
    from alitool.backends import load_backend
    from alitool.export.pipeline import ExportOptions, export_checkpoint

    export_checkpoint(out, ExportOptions(exporter="torchscript"), log=lambda _: None)
    onnx_backend = load_backend(out)
    assert onnx_backend.name == "onnxruntime" and onnx_backend.meta.input_shape == (2,)
    x = sample_mixture(7, 1)[0]
    np.testing.assert_allclose(onnx_backend.encode(x), backend.encode(x), rtol=1e-3, atol=1e-4)
    np.testing.assert_allclose(onnx_backend.decode(z), backend.decode(z), rtol=1e-3, atol=1e-4)


@pytest.mark.slow
def test_experiment_end_to_end_on_a_few_steps(tmp_path):
    out = tmp_path / "exp"
    args = ["experiment", "mixture", "--runs", "1", "--steps", "4", "--jobs", "1", "--out", str(out),
            "--set", "train.batch_size=32"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    table = (out / "table.md").read_text()
    assert "alitool experiment mixture --runs 1" in table
    for model in ("ali", "gan", "gan-inverse", "gan-posthoc", "vae"):
        assert f"| {model} | 1 |" in table
    results = json.loads((out / "results.json").read_text())
    assert set(results) == {"ali", "gan", "gan-inverse", "gan-posthoc", "vae"}
    assert all(r[0]["steps"] == 4 and 1 <= r[0]["modes"] <= 25 for r in results.values())
    assert (out / "figure8.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for model in ("ali", "gan-inverse", "gan-posthoc", "vae"):  # everything with an encoder loads for encode/export
        cfg, encoder, decoder = load_networks(out / "runs" / model / "seed-0" / "checkpoint.pt")
        assert decoder(encoder(torch.zeros(3, 2))[0]).shape == (3, 2)
    with pytest.raises(UserError, match="no encoder"):
        load_networks(out / "runs" / "gan" / "seed-0" / "checkpoint.pt")
    # finished runs are reused: a second call trains nothing; one with other settings is refused
    stamp = (out / "runs" / "ali" / "seed-0" / "checkpoint.pt").stat().st_mtime_ns
    again = CliRunner().invoke(main, args + ["--models", "ali"])
    assert again.exit_code == 0, again.output
    assert (out / "runs" / "ali" / "seed-0" / "checkpoint.pt").stat().st_mtime_ns == stamp
    other = CliRunner().invoke(main, args[:-2] + ["--models", "ali"])
    assert other.exit_code == 2 and "other settings" in other.output


def test_an_interrupted_run_continues_into_the_run_trained_in_one_go(tmp_path):
    def experiment(out, steps, *more):
        args = ["experiment", "mixture", "--paper-protocol", "--models", "ali", "--runs", "1", "--steps", str(steps),
                "--jobs", "1", "--out", str(out), "--set", "train.batch_size=32", *more]
        return CliRunner().invoke(main, args)

    assert experiment(tmp_path / "one-go", 6).exit_code == 0
    # a run stopped at step 3: its checkpoint without a result, as a killed experiment leaves it
    assert experiment(tmp_path / "stopped", 3).exit_code == 0
    run = tmp_path / "stopped" / "runs" / "ali" / "seed-0"
    (run / "result.json").unlink()
    refused = experiment(tmp_path / "stopped", 6, "--set", "train.lr=0.001")
    assert refused.exit_code == 2 and "unfinished run with other settings: train.lr" in refused.output
    assert "Traceback" not in refused.output
    continued = experiment(tmp_path / "stopped", 6)
    assert continued.exit_code == 0, continued.output
    result = json.loads((run / "result.json").read_text())
    assert result["steps"] == 6 and result["continued_from_step"] == 3
    # its cost counts both sessions: one metrics row each (steps 3 and 6), their times summed
    with open(run / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["step"]) for r in rows] == [3, 6] and all(float(r["cpu_seconds"]) > 0 for r in rows)
    for whole, column in (("cpu_seconds_all_sessions", "cpu_seconds"), ("training_seconds_all_sessions", "seconds")):
        assert result[whole] == round(sum(float(r[column]) for r in rows), 1)
    assert "max_steps: 6" in (run / "config.yaml").read_text()  # the run folder's config is the longer run's
    one_go = torch.load(tmp_path / "one-go" / "runs" / "ali" / "seed-0" / "checkpoint.pt", weights_only=True)
    resumed = torch.load(run / "checkpoint.pt", weights_only=True)
    for net in ("encoder", "decoder", "discriminator"):
        for name, value in one_go["models"][net].items():
            torch.testing.assert_close(resumed["models"][net][name], value, rtol=0, atol=0, msg=f"{net}.{name}")
    assert "resumed" in (run / "train.log").read_text()
    # a learning rate that decays over the run's length: the longer run is another run, so no continuing
    linear = ("--set", "train.lr_schedule=linear")
    assert experiment(tmp_path / "decaying", 3, *linear).exit_code == 0
    (tmp_path / "decaying" / "runs" / "ali" / "seed-0" / "result.json").unlink()
    decaying = experiment(tmp_path / "decaying", 9, *linear)
    assert decaying.exit_code == 2 and "decays over the run's length" in decaying.output


@pytest.mark.slow
@pytest.mark.parametrize("ctrl_c", [False, True], ids=["sigterm-to-the-main-process", "ctrl-c-to-the-group"])
def test_a_stop_ends_the_workers_and_the_same_command_continues(tmp_path, ctrl_c):
    """A scheduler's SIGTERM reaches the experiment's own process only, Ctrl-C the whole process group: either
    way the workers stop (each saves its checkpoint), no further run starts, and the command exits 130 with one
    line; running it again continues."""
    out = tmp_path / "exp"
    args = [sys.executable, "-m", "alitool.cli", "experiment", "mixture", "--paper-protocol", "--models", "ali,gan",
            "--runs", "2", "--jobs", "2", "--steps", "100000", "--out", str(out),
            "--set", "train.batch_size=32", "--set", "train.checkpoint_every_steps=20"]
    runs = [out / "runs" / model / "seed-0" for model in ("ali", "gan")]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while not all((run / "checkpoint.pt").is_file() for run in runs):
            assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read() if proc.poll() else ""
            time.sleep(0.2)
        if ctrl_c:
            os.killpg(proc.pid, signal.SIGINT)
        else:
            proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and err.strip().splitlines()[-1].startswith("interrupted")
    deadline = time.monotonic() + 30  # no worker left behind, training with nobody to collect it
    with pytest.raises(ProcessLookupError):  # (multiprocessing's resource tracker takes a moment to end)
        while time.monotonic() < deadline:
            os.killpg(proc.pid, 0)
            time.sleep(0.2)
    for run in runs:
        assert f"stopped by {'SIGINT' if ctrl_c else 'SIGTERM'}" in (run / "train.log").read_text()
        assert not (run / "result.json").exists()
    assert not (out / "runs" / "ali" / "seed-1").exists()  # the runs not started were cancelled
    stopped_at = torch.load(runs[0] / "checkpoint.pt", weights_only=True)["step"]
    again = CliRunner().invoke(main, ["experiment", "mixture", "--paper-protocol", "--models", "ali", "--runs", "1",
                                      "--jobs", "1", "--steps", str(stopped_at + 2), "--out", str(out),
                                      "--set", "train.batch_size=32", "--set", "train.checkpoint_every_steps=20"])
    assert again.exit_code == 0, again.output
    assert json.loads((runs[0] / "result.json").read_text())["continued_from_step"] == stopped_at


def test_an_out_that_is_a_file_is_one_line(tmp_path):
    (tmp_path / "taken").write_text("a file")
    result = CliRunner().invoke(main, ["experiment", "mixture", "--runs", "1", "--steps", "2", "--jobs", "1",
                                       "--out", str(tmp_path / "taken")])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert str(tmp_path / "taken") in result.output and (tmp_path / "taken").read_text() == "a file"


def test_unknown_model_is_one_line():
    result = CliRunner().invoke(main, ["experiment", "mixture", "--models", "ali,wgan"])
    assert result.exit_code == 2
    assert "unknown model 'wgan'" in result.output and "Traceback" not in result.output


def test_seeds_name_ranges_and_lists_and_refuse_anything_else():
    assert parse_seeds("0-4") == (0, 1, 2, 3, 4)
    assert parse_seeds("7") == (7,)
    assert parse_seeds("5-6, 0,3,5") == (0, 3, 5, 6)
    for bad in ("", "a", "3-1", "2-", "-2", "1,,2", "0.5"):
        with pytest.raises(UserError, match="is not a seed or a range"):
            parse_seeds(bad)
    with pytest.raises(UserError, match="at most 1000"):
        parse_seeds("0-1000")


def test_seeds_train_only_the_named_seeds_and_the_table_says_so(tmp_path):
    out = tmp_path / "exp"
    args = ["experiment", "mixture", "--models", "ali", "--seeds", "2", "--steps", "2", "--jobs", "1",
            "--out", str(out), "--set", "train.batch_size=32"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (out / "runs" / "ali").iterdir()) == ["seed-2"]
    table = (out / "table.md").read_text()
    assert "alitool experiment mixture --seeds 2 --models ali" in table and "| ali | 1 |" in table
    assert [r["seed"] for r in json.loads((out / "results.json").read_text())["ali"]] == [2]
    assert (out / "figure8.png").is_file()
    both = CliRunner().invoke(main, args + ["--runs", "3"])
    assert both.exit_code == 2 and "--runs and --seeds" in both.output and "Traceback" not in both.output
