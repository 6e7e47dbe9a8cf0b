"""Which split the K+1 game's labels come from (paper section 4.3, train.semi_supervised.labelled_split), on tiny
SVHN files in the official MATLAB v5 format: by default SVHN's 73k train_32x32.mat (alitool's val split, where the
feature-matching GAN baseline takes its 1000 labels) while unlabelled training runs on extra; `extra` on request;
the split saved beside the indices in the checkpoint, kept on resume, and an older checkpoint without it read as
the training split; the labelled images kept out of the monitoring images; one-line errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import scipy.io
import torch
from click.testing import CliRunner

from alitool.checkpoint import load_checkpoint
from alitool.cli import main
from alitool.config import from_dict, load_config, with_train
from alitool.data import ArrayDataset
from alitool.errors import UserError
from alitool.trainers.loop import Trainer
from alitool.trainers.semi import SemiSupervisedGame, balanced_labelled_subset

# An SVHN-shaped (3x32x32) model small enough that a step takes milliseconds.
TINY_SVHN = [
    "model.latent_dim=4",
    "model.encoder=[[conv,4,2,8,true,0.0,lrelu],[conv,4,2,8,true,0.0,lrelu],[conv,6,1,16,true,0.0,lrelu],"
    "[conv,1,1,8,false,0.0,linear]]",
    "model.decoder=[[deconv,8,1,16,true,0.0,lrelu],[deconv,2,2,8,true,0.0,lrelu],[deconv,2,2,8,true,0.0,lrelu],"
    "[conv,1,1,3,false,0.0,sigmoid]]",
    "model.disc_x=[[conv,4,2,8,false,0.2,lrelu],[conv,4,2,8,true,0.2,lrelu],[conv,6,1,16,true,0.2,lrelu]]",
    "model.disc_z=[[conv,1,1,16,false,0.2,lrelu]]",
    "model.disc_xz=[[conv,1,1,16,false,0.2,lrelu],[conv,1,1,1,false,0.2,linear]]",
    "train.batch_size=8",
    "train.sample_grid=8",
    "train.channels_last=false",
    "train.precision=fp32",
    "train.semi_supervised.labels=20",
    "train.semi_supervised.labelled_batch_size=4",
]
N_EXTRA, N_TRAIN, N_TEST = 60, 40, 20  # extra_32x32.mat, train_32x32.mat (alitool's val), test_32x32.mat


@pytest.fixture(autouse=True)
def _no_network_no_home(tmp_path, monkeypatch):
    monkeypatch.setenv("ALITOOL_DATA", str(tmp_path / "default-data"))
    monkeypatch.setenv("ALITOOL_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("ALITOOL_OFFLINE", "1")


def write_svhn_mat(path: Path, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """An official-layout SVHN file: X uint8 [32, 32, 3, N], y [N, 1] in 1..10 (10 = digit 0), MATLAB v5.
    Returns the NCHW images and 0..9 labels the loader must give."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, 3, 32, 32), dtype=np.uint8)
    digits = rng.permutation(np.arange(n) % 10)  # every class, in an order that differs per file
    y = np.where(digits == 0, 10, digits).astype(np.uint8)[:, None]
    scipy.io.savemat(str(path), {"X": images.transpose(2, 3, 1, 0), "y": y}, format="5")
    return images, digits


@pytest.fixture
def svhn_dir(tmp_path):
    """Three official files with different images: {"extra": (x, y), "val": ..., "test": ...} and their folder."""
    folder = tmp_path / "svhn"
    folder.mkdir()
    files = {"extra": write_svhn_mat(folder / "extra_32x32.mat", N_EXTRA, 1),
             "val": write_svhn_mat(folder / "train_32x32.mat", N_TRAIN, 2),
             "test": write_svhn_mat(folder / "test_32x32.mat", N_TEST, 3)}
    return folder, files


def svhn_cfg(*extra: str, **train):
    return with_train(load_config("svhn", TINY_SVHN + list(extra)), **train)


def trainer_for(cfg, run: Path, folder: Path) -> Trainer:
    return Trainer(cfg, run, data_dir=str(folder), log=lambda _: None)


def train_steps(cfg, run: Path, folder: Path, steps: int) -> Trainer:
    trainer = trainer_for(with_train(cfg, max_steps=steps, epochs=1), run, folder)
    trainer.start_fresh()
    trainer.fit()
    return trainer


def labelled_images(game: SemiSupervisedGame) -> np.ndarray:
    return np.rint(game.x_labelled.cpu().numpy() * 255).astype(np.uint8)


def assert_labels_from(game: SemiSupervisedGame, images: np.ndarray, labels: np.ndarray, seed: int = 0) -> None:
    """The game's labelled set is the balanced draw (seed) of that file, its images and its labels."""
    idx = game.labelled_indices
    assert np.array_equal(idx, balanced_labelled_subset(labels, 20, 10, seed))
    np.testing.assert_array_equal(labelled_images(game), images[idx])
    np.testing.assert_array_equal(game.y_labelled.cpu().numpy(), labels[idx])


# -- which split ----------------------------------------------------------------------------------------------


def test_svhn_default_draws_the_labels_from_the_73k_split_and_trains_on_extra(svhn_dir, tmp_path):
    folder, files = svhn_dir
    trainer = train_steps(svhn_cfg(), tmp_path / "run", folder, steps=2)
    game = trainer.game
    assert game.labelled_split == "val" and trainer.train_data.split == "train"
    assert len(trainer.train_data) == N_EXTRA  # unlabelled training: extra_32x32.mat
    assert_labels_from(game, *files["val"])
    extra = load_checkpoint(tmp_path / "run" / "checkpoint.pt")["extra"]
    assert extra["labelled_split"] == "val"
    assert np.array_equal(extra["labelled_indices"].numpy(), game.labelled_indices)


def test_explicit_extra_or_train_draws_the_labels_from_the_training_split(svhn_dir, tmp_path):
    folder, files = svhn_dir
    for name in ("extra", "train"):  # two names of extra_32x32.mat
        trainer = trainer_for(svhn_cfg(f"train.semi_supervised.labelled_split={name}"), tmp_path / name, folder)
        assert trainer.game.labelled_split == "train"
        assert_labels_from(trainer.game, *files["extra"])
        assert len(trainer.eval_data) == N_TRAIN  # labels from the training split: the monitoring set is whole


def test_official_train_is_the_same_split_as_val(svhn_dir, tmp_path):
    folder, files = svhn_dir
    trainer = trainer_for(svhn_cfg("train.semi_supervised.labelled_split=official-train"), tmp_path / "r", folder)
    assert trainer.game.labelled_split == "val"
    assert_labels_from(trainer.game, *files["val"])


def test_labelled_images_stay_out_of_the_monitoring_images(svhn_dir, tmp_path):
    folder, files = svhn_dir
    trainer = trainer_for(svhn_cfg(), tmp_path / "run", folder)
    val_x, val_y = files["val"]
    held_out = np.setdiff1d(np.arange(N_TRAIN), trainer.game.labelled_indices)
    assert trainer.eval_data.split == "val" and len(trainer.eval_data) == N_TRAIN - 20
    np.testing.assert_array_equal(trainer.eval_data.x, val_x[held_out])
    np.testing.assert_array_equal(trainer.eval_data.y, val_y[held_out])
    shown = np.rint(trainer.fixed_x.numpy() * 255).astype(np.uint8)
    labelled = {img.tobytes() for img in labelled_images(trainer.game)}
    assert not labelled & {img.tobytes() for img in shown}


def test_other_datasets_default_to_their_training_split(tmp_path):
    from helpers import TINY_DIGITS

    cfg = load_config("digits", TINY_DIGITS + ["train.semi_supervised.labels=50"])
    trainer = Trainer(cfg, tmp_path / "run", log=lambda _: None)
    assert trainer.game.labelled_split == "train"
    assert np.array_equal(trainer.game.labelled_indices, balanced_labelled_subset(trainer.train_data.y, 50, 10, 0))
    with pytest.raises(UserError, match="test images"):  # digits serves its test images as val too
        Trainer(load_config("digits", TINY_DIGITS + ["train.semi_supervised.labels=50",
                                                     "train.semi_supervised.labelled_split=val"]),
                tmp_path / "run2", log=lambda _: None)


# -- resume ---------------------------------------------------------------------------------------------------


def resume(run: Path, folder: Path, steps: int, *overrides: str) -> Trainer:
    from alitool.config import apply_overrides, to_dict

    saved = load_checkpoint(run / "checkpoint.pt")["config"]
    cfg = with_train(from_dict(apply_overrides(to_dict(saved), list(overrides))), max_steps=steps)
    trainer = trainer_for(cfg, run, folder)
    trainer.resume()
    trainer.fit()
    return trainer


def rewrite_checkpoint(path: Path, change) -> None:
    payload = torch.load(path, weights_only=True)
    change(payload)
    torch.save(payload, path)


def test_resume_keeps_the_recorded_split_and_indices(svhn_dir, tmp_path):
    folder, files = svhn_dir
    run = tmp_path / "run"
    train_steps(svhn_cfg(), run, folder, steps=1)
    # Other balanced indices into the same split: a resumed run must take the checkpoint's, not draw again.
    other = balanced_labelled_subset(files["val"][1], 20, 10, seed=7)
    assert not np.array_equal(other, balanced_labelled_subset(files["val"][1], 20, 10, seed=0))

    def swap(payload):
        payload["extra"]["labelled_indices"] = torch.from_numpy(other)

    rewrite_checkpoint(run / "checkpoint.pt", swap)
    trainer = resume(run, folder, steps=2)
    assert trainer.pos.step == 2 and trainer.game.labelled_split == "val"
    assert np.array_equal(trainer.game.labelled_indices, other)
    np.testing.assert_array_equal(labelled_images(trainer.game), files["val"][0][other])
    extra = load_checkpoint(run / "checkpoint.pt")["extra"]
    assert extra["labelled_split"] == "val" and np.array_equal(extra["labelled_indices"].numpy(), other)


def test_resume_of_an_extra_run_keeps_extra(svhn_dir, tmp_path):
    folder, files = svhn_dir
    run = tmp_path / "run"
    train_steps(svhn_cfg("train.semi_supervised.labelled_split=extra"), run, folder, steps=1)
    trainer = resume(run, folder, steps=2)
    assert trainer.game.labelled_split == "train"
    assert_labels_from(trainer.game, *files["extra"])
    assert load_checkpoint(run / "checkpoint.pt")["extra"]["labelled_split"] == "train"


def test_old_checkpoint_without_a_split_resumes_on_the_training_split(svhn_dir, tmp_path):
    """A checkpoint from before labelled_split: no split in extra, no key in its config, indices into extra."""
    folder, files = svhn_dir
    run = tmp_path / "run"
    train_steps(svhn_cfg("train.semi_supervised.labelled_split=extra"), run, folder, steps=1)
    # seed 5's draw from extra differs from seed 0's draw from val: the old indices must come back as they are
    old = balanced_labelled_subset(files["extra"][1], 20, 10, seed=5)

    def make_old(payload):
        del payload["extra"]["labelled_split"]
        del payload["config"]["train"]["semi_supervised"]["labelled_split"]
        payload["extra"]["labelled_indices"] = torch.from_numpy(old)

    rewrite_checkpoint(run / "checkpoint.pt", make_old)
    assert load_checkpoint(run / "checkpoint.pt")["config"].train.semi_supervised.labelled_split == ""
    trainer = resume(run, folder, steps=2)
    assert trainer.pos.step == 2 and trainer.game.labelled_split == "train"
    assert np.array_equal(trainer.game.labelled_indices, old)
    np.testing.assert_array_equal(labelled_images(trainer.game), files["extra"][0][old])
    np.testing.assert_array_equal(trainer.game.y_labelled.numpy(), files["extra"][1][old])
    assert load_checkpoint(run / "checkpoint.pt")["extra"]["labelled_split"] == "train"  # said from now on


def test_resume_refuses_another_named_split(svhn_dir, tmp_path):
    folder, _ = svhn_dir
    run = tmp_path / "run"
    train_steps(svhn_cfg(), run, folder, steps=1)
    with pytest.raises(UserError, match="keeps its labelled examples: they come from the val split") as err:
        resume(run, folder, 2, "train.semi_supervised.labelled_split=extra")
    assert "\n" not in str(err.value)


# -- errors ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("overrides", "message"), [
    (["train.semi_supervised.labelled_split=nosuch"], r"labelled_split=nosuch: svhn has splits .* not 'nosuch'"),
    (["train.semi_supervised.labelled_split=test"], "holds the svhn test images"),
    (["train.semi_supervised.labels=100"], r"class \d has 4 examples in the svhn val split; 10 labelled ones"),
    (["train.semi_supervised.labels=100", "train.semi_supervised.labelled_split=extra"],
     r"class \d has 6 examples in the svhn train split; 10 labelled ones"),
])
def test_bad_labelled_splits_are_one_line_errors(svhn_dir, tmp_path, overrides, message):
    folder, _ = svhn_dir
    with pytest.raises(UserError, match=message) as err:
        trainer_for(svhn_cfg(*overrides), tmp_path / "run", folder)
    assert "\n" not in str(err.value)


def test_missing_labelled_file_and_unlabelled_split_are_one_line_errors(svhn_dir, tmp_path):
    folder, _ = svhn_dir
    (folder / "train_32x32.mat").unlink()
    with pytest.raises(UserError, match="labelled_split=val: svhn: missing train_32x32.mat") as err:
        Trainer(svhn_cfg(), tmp_path / "run", data_dir=str(folder), log=lambda _: None,
                eval_data=ArrayDataset("svhn", "test", np.zeros((4, 3, 32, 32), np.uint8)))
    assert "\n" not in str(err.value)
    game = SemiSupervisedGame(svhn_cfg(), torch.device("cpu"))
    train = ArrayDataset("svhn", "train", np.zeros((30, 3, 32, 32), np.uint8), np.arange(30) % 10)
    unlabelled = ArrayDataset("svhn", "val", np.zeros((30, 3, 32, 32), np.uint8))
    with pytest.raises(UserError, match="the svhn val split has no labels"):
        game.attach_data(train, lambda split: unlabelled)


def test_config_refuses_a_malformed_split_name():
    with pytest.raises(UserError, match="labelled_split"):
        svhn_cfg("train.semi_supervised.labelled_split=Val/../x")


# -- the documented commands ----------------------------------------------------------------------------------


def test_cli_train_then_eval_classify_with_the_default_and_extra(svhn_dir, tmp_path):
    folder, _ = svhn_dir
    runner = CliRunner()
    tiny = [arg for o in TINY_SVHN for arg in ("--set", o)]
    for name, split in (("default", []), ("extra", ["--set", "train.semi_supervised.labelled_split=extra"])):
        run = tmp_path / name
        result = runner.invoke(main, ["train", "svhn", "--data-dir", str(folder), "--out", str(run), "--device",
                                      "cpu", "--max-steps", "1", *tiny, *split])
        assert result.exit_code == 0, result.output
        extra = load_checkpoint(run / "checkpoint.pt")["extra"]
        assert extra["labelled_split"] == ("val" if name == "default" else "train")
        result = runner.invoke(main, ["eval", "classify", str(run), "--data-dir", str(folder), "--device", "cpu"])
        assert result.exit_code == 0, result.output
        assert "% error" in result.output
