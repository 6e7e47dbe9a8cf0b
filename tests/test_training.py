"""The ALI game and the training loop on a tiny real model and real digits data."""

import copy
import math

import numpy as np
import pytest
import torch
from helpers import TINY_DIGITS, parameters_changed, parameters_of, small_train_set

from alitool.checkpoint import load_checkpoint
from alitool.errors import TrainingDiverged
from alitool.trainers.ali import ALIGame
from alitool.trainers.loop import Trainer
from alitool.trainers.losses import discriminator_loss, generator_loss


def softplus(v):
    return math.log1p(math.exp(v))


def test_losses_equal_the_formulas_on_a_hand_computed_case():
    real, fake = torch.tensor([0.0, 2.0]), torch.tensor([-1.0, 1.0])
    expected_d = (softplus(-0.0) + softplus(-2.0)) / 2 + (softplus(-1.0) + softplus(1.0)) / 2
    expected_g = (softplus(0.0) + softplus(2.0)) / 2 + (softplus(1.0) + softplus(-1.0)) / 2
    assert float(discriminator_loss(real, fake)) == pytest.approx(expected_d, rel=1e-6)
    assert float(generator_loss(real, fake)) == pytest.approx(expected_g, rel=1e-6)
    # -log sigmoid(l) = softplus(-l): the D loss is BCE with real=1, fake=0, computed stably
    bce = torch.nn.functional.binary_cross_entropy_with_logits
    assert float(discriminator_loss(real, fake)) == pytest.approx(
        float(bce(real, torch.ones(2)) + bce(fake, torch.zeros(2))), rel=1e-6)


def test_one_step_updates_all_three_networks(tiny_cfg):
    game = ALIGame(tiny_cfg, torch.device("cpu"))
    nets = game.modules()
    before = {name: parameters_of(m) for name, m in nets.items()}
    game.step(torch.rand(16, 1, 8, 8))
    for name, m in nets.items():
        assert parameters_changed(before[name], m), name


@pytest.mark.parametrize("frozen", ["generator", "discriminator"])
def test_each_update_moves_only_its_own_player(tiny_cfg, frozen):
    game = ALIGame(tiny_cfg, torch.device("cpu"))
    for group in game.optimizers()[frozen].param_groups:
        group["lr"] = 0.0  # Adam with lr 0 does not move its parameters
    before = {name: parameters_of(m) for name, m in game.modules().items()}
    game.step(torch.rand(16, 1, 8, 8))
    moved = {name: parameters_changed(before[name], m) for name, m in game.modules().items()}
    if frozen == "generator":  # only D stepped: encoder and decoder are untouched
        assert moved == {"encoder": False, "decoder": False, "discriminator": True}
    else:
        assert moved == {"encoder": True, "decoder": True, "discriminator": False}


def test_gradients_come_from_each_players_own_loss(tiny_cfg):
    """D's gradient is d loss_d / d theta_D and G's is d loss_g / d theta_G, from the same forward graph."""
    game = ALIGame(tiny_cfg, torch.device("cpu"))
    reference = copy.deepcopy(game)
    x = torch.rand(16, 1, 8, 8)
    torch.manual_seed(5)
    game.step(x)
    torch.manual_seed(5)  # same z, eps and dropout masks
    m = reference.model
    z = torch.randn(16, tiny_cfg.model.latent_dim)
    z_hat, x_tilde = m.encoder.sample(x), m.decoder(z)
    logits = m.discriminator(torch.cat([x, x_tilde]), torch.cat([z_hat, z]))
    real, fake = logits[:16], logits[16:]
    grads_d = torch.autograd.grad(discriminator_loss(real, fake), reference.d_params, retain_graph=True)
    grads_g = torch.autograd.grad(generator_loss(real, fake), reference.g_params)
    for p, g in zip(game.d_params, grads_d, strict=True):
        torch.testing.assert_close(p.grad, g)
    for p, g in zip(game.g_params, grads_g, strict=True):
        torch.testing.assert_close(p.grad, g)


def _small_train_set(cfg):
    return small_train_set(cfg, 100)


def test_checkpoint_round_trip_gives_identical_outputs(tiny_cfg, tmp_path):
    trainer = Trainer(tiny_cfg, tmp_path / "run", train_data=_small_train_set(tiny_cfg))
    trainer.start_fresh()
    trainer.game.step(trainer.train_data.float_batch(slice(0, 32)))  # move away from the initial weights
    trainer.save()
    from alitool.trained_networks import load_networks

    _, enc, dec = load_networks(trainer.checkpoint_path)
    x, z = torch.rand(5, 1, 8, 8), torch.randn(5, tiny_cfg.model.latent_dim)
    trainer.game.train(False)
    with torch.no_grad():
        torch.testing.assert_close(enc(x)[0], trainer.game.model.encoder(x)[0], rtol=0, atol=0)
        torch.testing.assert_close(dec(z), trainer.game.model.decoder(z), rtol=0, atol=0)


def _run(cfg, run_dir, max_steps, resume=False):
    from alitool.config import with_train

    trainer = Trainer(with_train(cfg, max_steps=max_steps, epochs=100), run_dir, train_data=_small_train_set(cfg))
    if resume:
        trainer.resume()
    else:
        trainer.start_fresh()
    trainer.fit()
    return trainer


def test_resume_continues_at_the_same_step_and_matches_an_uninterrupted_run(tiny_cfg, tmp_path):
    straight = _run(tiny_cfg, tmp_path / "straight", max_steps=8)
    _run(tiny_cfg, tmp_path / "resumed", max_steps=5)  # 3 steps per epoch: stops inside epoch 2
    assert load_checkpoint(tmp_path / "resumed" / "checkpoint.pt")["step"] == 5
    resumed = _run(tiny_cfg, tmp_path / "resumed", max_steps=8, resume=True)
    assert resumed.pos.step == 8 and resumed.pos.epoch == 2 and resumed.pos.batch == 2
    for name, module in straight.game.modules().items():
        other = resumed.game.modules()[name].state_dict().values()
        for (k, a), b in zip(module.state_dict().items(), other, strict=True):
            torch.testing.assert_close(a, b, msg=f"{name}.{k}")


def test_run_folder_has_the_artifacts(tiny_cfg, tmp_path):
    _run(tiny_cfg, tmp_path / "run", max_steps=7)
    run = tmp_path / "run"
    for name in ("checkpoint.pt", "config.yaml", "metrics.csv", "losses.png",
                 "samples/epoch_001.png", "reconstructions/epoch_001.png", "samples/epoch_003.png"):
        assert (run / name).is_file(), name
    rows = (run / "metrics.csv").read_text().splitlines()
    assert rows[0].startswith("epoch,step,loss_d,loss_g") and len(rows) == 4  # epochs 1, 2 and a partial 3rd
    import cv2

    grid = cv2.imread(str(run / "reconstructions" / "epoch_001.png"))
    assert grid is not None and grid.shape[1] > grid.shape[0]  # 16 columns: originals | reconstructions


def test_divergence_stops_with_the_step_and_keeps_the_last_good_checkpoint(tiny_cfg, tmp_path):
    good = _run(tiny_cfg, tmp_path / "run", max_steps=3)
    kept = good.checkpoint_path.read_bytes()
    from alitool.config import with_train

    trainer = Trainer(with_train(tiny_cfg, max_steps=50, epochs=100), tmp_path / "run",
                      train_data=_small_train_set(tiny_cfg))
    trainer.resume()
    for group in trainer.game.opt_g.param_groups + trainer.game.opt_d.param_groups:
        group["lr"] = 1e30  # an absurd learning rate: the weights overflow within a few steps
    with pytest.raises(TrainingDiverged, match=r"step \d+: .* (became|is not finite)"):
        trainer.fit()
    assert good.checkpoint_path.read_bytes() == kept
    assert load_checkpoint(good.checkpoint_path)["step"] == 3


def test_batches_are_reproducible_and_skip_on_resume():
    from alitool.data import iterate_batches

    full = list(iterate_batches(10, 3, seed=1, epoch=4))
    assert len(full) == 3 and len(np.unique(np.concatenate(full))) == 9
    assert [b.tolist() for b in iterate_batches(10, 3, seed=1, epoch=4, start=1)] == [b.tolist() for b in full[1:]]
    assert full[0].tolist() != next(iterate_batches(10, 3, seed=1, epoch=5)).tolist()


def test_a_log_that_is_a_file_gets_plain_progress_lines(tiny_cfg, tmp_path, monkeypatch):
    """Under pytest stderr is not a terminal, so tqdm draws nothing: the loop logs the progress as lines."""
    import alitool.trainers.loop as loop_module
    from alitool.config import with_train

    monkeypatch.setattr(loop_module, "PLAIN_PROGRESS_SECONDS", 0.0)
    lines = []
    trainer = Trainer(with_train(tiny_cfg, max_steps=4, epochs=100), tmp_path / "run",
                      train_data=_small_train_set(tiny_cfg), log=lines.append)
    trainer.start_fresh()
    trainer.fit()
    progress = [line for line in lines if line.startswith("step ")]
    assert [line.split(" ")[1] for line in progress] == ["1/4", "2/4", "3/4", "4/4"]
    assert "loss_d" in progress[-1] and "s/step" in progress[-1] and progress[-1].endswith("left")


def test_metrics_csv_keeps_the_columns_a_switch_adds(tmp_path):
    """The ALICE term is logged per epoch next to the fixed columns, as the K+1 game's loss_sup would be."""
    import csv

    from alitool.config import load_config

    cfg = load_config("digits", [*TINY_DIGITS, "train.alice=1"])
    _run(cfg, tmp_path / "run", max_steps=4)
    with open(tmp_path / "run" / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0])[-1] == "alice" and all(float(r["alice"]) > 0 for r in rows)
