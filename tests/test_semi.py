"""The K+1 semi-supervised ALI game (paper section 4.3; Salimans et al. 2016): losses on hand-computed cases,
the balanced labelled subset, the widened discriminator, one training step's gradients, training and resume
through the Trainer, and `alitool eval classify` on the resulting run."""

import copy
import json
import math

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from helpers import TINY_DIGITS

from alitool.checkpoint import load_checkpoint
from alitool.cli import main
from alitool.config import load_config, with_train
from alitool.data import load_dataset
from alitool.errors import UserError
from alitool.models import Discriminator, reparametrize
from alitool.trainers.loop import Trainer
from alitool.trainers.semi import (
    SemiSupervisedGame,
    balanced_labelled_subset,
    kplus1_config,
    kplus1_discriminator_loss,
    kplus1_generator_loss,
    real_logit,
    supervised_loss,
)

SEMI = ["train.semi_supervised.labels=50", "train.semi_supervised.labelled_batch_size=10"]


def semi_cfg(*extra):
    return load_config("digits", TINY_DIGITS + SEMI + list(extra))


# -- losses ---------------------------------------------------------------------------------------------------


def test_losses_on_hand_computed_cases():
    # K = 2. Row 1: logits (0, 0, 0) -> p = (1/3, 1/3, 1/3). Row 2: exp(logits) = (3, 1, 2) -> p = (1/2, 1/6, 1/3).
    logits = torch.tensor([[0.0, 0.0, 0.0], [math.log(3.0), 0.0, math.log(2.0)]])
    y = torch.tensor([0, 1])
    # supervised: -log p(y | y <= K): row 1: -log(1/2); row 2 (y = 1): -log((1/6) / (1/2 + 1/6)) = -log(1/4)
    assert float(supervised_loss(logits, y)) == pytest.approx((math.log(2) + math.log(4)) / 2, rel=1e-6)
    # s = log((p_1 + p_2) / p_{K+1}): row 1 log 2, row 2 log 2 too ((1/2 + 1/6) / (1/3))
    assert real_logit(logits).tolist() == pytest.approx([math.log(2), math.log(2)], rel=1e-6)
    # unlabelled as data: -log(1 - p_{K+1}) = -log(2/3) in both rows; as generated: -log p_{K+1} = -log(1/3)
    total, sup = kplus1_discriminator_loss(logits, y, logits, logits)
    assert float(sup) == pytest.approx((math.log(2) + math.log(4)) / 2, rel=1e-6)
    assert float(total) == pytest.approx(float(sup) + math.log(3 / 2) + math.log(3), rel=1e-6)
    # the encoder/decoder swap: q pairs should look generated (-log p_{K+1}), p pairs real (-log(1 - p_{K+1}))
    assert float(kplus1_generator_loss(logits, logits)) == pytest.approx(math.log(3) + math.log(3 / 2), rel=1e-6)


def test_losses_equal_the_softmax_formulas_on_random_logits():
    torch.manual_seed(1)
    lab, unl, fake = (torch.randn(7, 6, dtype=torch.float64) * 3 for _ in range(3))
    y = torch.randint(0, 5, (7,))
    p_lab, p_unl, p_fake = (torch.softmax(v, dim=1) for v in (lab, unl, fake))
    expected_sup = -(p_lab[torch.arange(7), y] / (1 - p_lab[:, -1])).log().mean()
    expected_d = expected_sup - (1 - p_unl[:, -1]).log().mean() - p_fake[:, -1].log().mean()
    expected_g = -p_unl[:, -1].log().mean() - (1 - p_fake[:, -1]).log().mean()
    total, sup = kplus1_discriminator_loss(lab, y, unl, fake)
    assert float(sup) == pytest.approx(float(expected_sup), rel=1e-9)
    assert float(total) == pytest.approx(float(expected_d), rel=1e-9)
    assert float(kplus1_generator_loss(unl, fake)) == pytest.approx(float(expected_g), rel=1e-9)


def test_losses_stay_finite_for_extreme_logits():
    big = torch.tensor([[200.0, -200.0, -200.0], [-200.0, -200.0, 200.0]])
    total, _ = kplus1_discriminator_loss(big, torch.tensor([0, 1]), big, big)
    assert math.isfinite(float(total)) and math.isfinite(float(kplus1_generator_loss(big, big)))


# -- labelled subset and the widened discriminator ------------------------------------------------------------


def test_labelled_subset_is_balanced_seeded_and_distinct():
    labels = np.repeat(np.arange(10), 30)[np.random.default_rng(0).permutation(300)]
    idx = balanced_labelled_subset(labels, 100, 10, seed=3)
    assert len(np.unique(idx)) == 100 and np.bincount(labels[idx], minlength=10).tolist() == [10] * 10
    assert np.array_equal(idx, balanced_labelled_subset(labels, 100, 10, seed=3))
    assert not np.array_equal(idx, balanced_labelled_subset(labels, 100, 10, seed=4))
    with pytest.raises(UserError, match="multiple of 10"):
        balanced_labelled_subset(labels, 105, 10, seed=0)
    with pytest.raises(UserError, match="class 0 has 30"):
        balanced_labelled_subset(labels, 400, 10, seed=0)


def test_kplus1_config_widens_only_the_last_row():
    cfg = semi_cfg()
    wide = kplus1_config(cfg)
    assert wide.model.disc_xz[-1].channels == 11 and wide.model.disc_xz[:-1] == cfg.model.disc_xz[:-1]
    assert kplus1_config(wide) == wide  # idempotent: a resumed run's saved config is already widened
    d = Discriminator(wide)
    assert d(torch.rand(5, 1, 8, 8), torch.randn(5, 4)).shape == (5, 11)
    bad = load_config("digits", TINY_DIGITS + SEMI + ["model.disc_xz=[[conv,1,1,16,false,0.2,lrelu],"
                                                      "[conv,1,1,7,false,0.2,linear]]"])
    with pytest.raises(UserError, match="7 channels"):
        kplus1_config(bad)


# -- one step -------------------------------------------------------------------------------------------------


def test_step_gradients_are_each_players_own_k_plus_1_loss():
    """After one step, D's gradient is d loss_D / d theta_D and G's is d loss_G / d theta_G, with the losses
    written directly from softmax probabilities on the same forward pass (same seed: same labelled batch, z, eps
    and dropout masks)."""
    cfg = semi_cfg()
    game = SemiSupervisedGame(cfg, torch.device("cpu"))
    game.attach_data(load_dataset(cfg, "train"))
    reference = copy.deepcopy(game)
    x = torch.rand(16, 1, 8, 8)
    torch.manual_seed(5)
    metrics = game.step(x)
    torch.manual_seed(5)
    m = reference.model
    pick = torch.randperm(50)[:10]
    x_lab, y_lab = reference.x_labelled[pick], reference.y_labelled[pick]
    z = torch.randn(16, cfg.model.latent_dim)
    z_hat = reparametrize(*m.encoder(torch.cat([x_lab, x])))
    x_tilde = m.decoder(z)
    p = torch.softmax(m.discriminator(torch.cat([x_lab, x, x_tilde]), torch.cat([z_hat, z])), dim=1)
    p_lab, p_unl, p_fake = p[:10], p[10:26], p[26:]
    loss_d = (-(p_lab[torch.arange(10), y_lab] / (1 - p_lab[:, -1])).log().mean()
              - (1 - p_unl[:, -1]).log().mean() - p_fake[:, -1].log().mean())
    loss_g = -p_unl[:, -1].log().mean() - (1 - p_fake[:, -1]).log().mean()
    assert float(metrics["loss_d"]) == pytest.approx(float(loss_d.detach()), rel=1e-4)
    assert float(metrics["loss_g"]) == pytest.approx(float(loss_g.detach()), rel=1e-4)
    grads_d = torch.autograd.grad(loss_d, reference.d_params, retain_graph=True, allow_unused=True)
    grads_g = torch.autograd.grad(loss_g, reference.g_params, allow_unused=True)
    for params, grads in ((game.d_params, grads_d), (game.g_params, grads_g)):
        for param, expected in zip(params, grads, strict=True):
            if expected is None:
                assert param.grad is None or not param.grad.any()
            else:
                torch.testing.assert_close(param.grad, expected, rtol=1e-3, atol=1e-6)


def test_alice_adds_its_weighted_cycle_term_to_the_generator_loss_only():
    """train.alice in the K+1 game: same draws, D's loss unchanged, G's loss grows by lambda * the cycle term."""
    plain = SemiSupervisedGame(semi_cfg(), torch.device("cpu"))
    with_alice = SemiSupervisedGame(semi_cfg("train.alice=2"), torch.device("cpu"))
    with_alice.model.load_state_dict(plain.model.state_dict())
    train = load_dataset(semi_cfg(), "train")
    plain.attach_data(train)
    with_alice.attach_data(train)
    x = torch.rand(16, 1, 8, 8)
    torch.manual_seed(3)
    a = plain.step(x)
    torch.manual_seed(3)
    b = with_alice.step(x)
    assert "alice" not in a and float(b["alice"]) > 0
    assert float(b["loss_d"]) == pytest.approx(float(a["loss_d"]), rel=1e-6)
    assert float(b["loss_g"]) == pytest.approx(float(a["loss_g"]) + 2 * float(b["alice"]), rel=1e-5)
    moved = [not torch.equal(p, q) for p, q in zip(plain.g_params, with_alice.g_params, strict=True)]
    assert any(moved)


def test_k_plus_1_refuses_switches_it_does_not_implement():
    for switch in ("train.update=alternating", "model.disc_unary=true"):
        with pytest.raises(UserError, match="K\\+1 game supports"):
            SemiSupervisedGame(semi_cfg(switch), torch.device("cpu"))


def test_step_needs_labels_and_a_labelled_dataset():
    cfg = semi_cfg()
    game = SemiSupervisedGame(cfg, torch.device("cpu"))
    with pytest.raises(RuntimeError, match="attach_data"):
        game.step(torch.rand(4, 1, 8, 8))
    train = load_dataset(cfg, "train")
    train.y = None
    with pytest.raises(UserError, match="no labels"):
        game.attach_data(train)


# -- through the Trainer and the CLI --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def semi_run(tmp_path_factory):
    torch.set_num_threads(1)
    run = tmp_path_factory.mktemp("semi") / "run"
    cfg = with_train(semi_cfg(), max_steps=3, epochs=1)
    trainer = Trainer(cfg, run, log=lambda _: None)
    trainer.start_fresh()
    trainer.fit()
    return run, trainer


def test_config_switch_selects_the_k_plus_1_game_and_saves_its_labels(semi_run):
    run, trainer = semi_run
    assert isinstance(trainer.game, SemiSupervisedGame)
    payload = load_checkpoint(run / "checkpoint.pt")
    assert payload["step"] == 3 and payload["extra"]["game"] == "ali-kplus1"
    assert payload["config"].model.disc_xz[-1].channels == 11  # the checkpoint's config builds its own D
    saved = payload["extra"]["labelled_indices"].numpy()
    train = load_dataset(payload["config"], "train")
    assert np.array_equal(saved, balanced_labelled_subset(train.y, 50, 10, seed=0))
    assert np.bincount(train.y[saved], minlength=10).tolist() == [5] * 10
    assert "semi_supervised: {labels: 50" in (run / "config.yaml").read_text()


def test_k_plus_1_run_resumes(semi_run, tmp_path):
    import shutil

    run, _ = semi_run
    copy_dir = tmp_path / "copy"
    shutil.copytree(run, copy_dir)
    cfg = with_train(load_checkpoint(copy_dir / "checkpoint.pt")["config"], max_steps=5)
    trainer = Trainer(cfg, copy_dir, log=lambda _: None)
    trainer.resume()
    assert trainer.fit().step == 5


def test_eval_classify_reports_the_test_error(semi_run, tmp_path):
    run, _ = semi_run
    out = tmp_path / "classify.json"
    result = CliRunner().invoke(main, ["eval", "classify", str(run), "--out", str(out)])
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    assert report["test_size"] == 359 and 0.0 <= report["test_error"] <= 1.0
    assert f"{100 * report['test_error']:.2f}% error" in result.output
    assert report["labelled_indices_saved"] is True and report["classes"] == 10
    # The error is what the networks say: recompute it from the checkpoint
    from alitool.models import Encoder
    from alitool.trainers.semi import class_logits

    payload = load_checkpoint(run / "checkpoint.pt")
    cfg = payload["config"]
    enc, disc = Encoder(cfg).eval(), Discriminator(cfg).eval()
    enc.load_state_dict(payload["models"]["encoder"])
    disc.load_state_dict(payload["models"]["discriminator"])
    test = load_dataset(cfg, "test")
    predicted = class_logits(enc, disc, test.float_batch(slice(None))).argmax(dim=1).numpy()
    assert report["test_error"] == pytest.approx(float((predicted != test.y).mean()))


def test_eval_classify_refuses_a_plain_ali_run(tmp_path, tiny_cfg):
    trainer = Trainer(with_train(tiny_cfg, max_steps=1), tmp_path / "ali", log=lambda _: None)
    trainer.start_fresh()
    trainer.fit()
    result = CliRunner().invoke(main, ["eval", "classify", str(tmp_path / "ali")])
    assert result.exit_code == 2
    assert "not a semi-supervised run" in result.output and "Traceback" not in result.output
