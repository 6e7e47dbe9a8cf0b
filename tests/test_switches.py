"""The switches beyond the paper (docs/switches.md): each changes what it claims, and each off reproduces the
paper's ALI step bit for bit. Real tiny models and real digits data."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import TINY_DIGITS, small_train_set

from alitool.backends.torch_backend import TorchBackend
from alitool.config import load_config, with_train
from alitool.data import load_dataset
from alitool.errors import UserError
from alitool.models import reparametrize
from alitool.trainers.ali import ALIGame
from alitool.trainers.baselines import GANGame, VAEGame
from alitool.trainers.loop import Trainer
from alitool.trainers.losses import alice_cycle_loss, hinge_discriminator_loss, hinge_generator_loss
from alitool.trainers.semi import SemiSupervisedGame

CPU = torch.device("cpu")
OFF = ["model.conditional=false", "model.spectral_norm=false", "train.loss=bce", "train.alice=0", "train.ema=0"]
DETERMINISTIC = ["model.encoder_output=deterministic",
                 "model.encoder=[[conv,3,1,8,true,0.0,lrelu],[conv,3,1,8,true,0.0,lrelu],[conv,4,1,16,true,0.0,lrelu],"
                 "[conv,1,1,4,false,0.0,linear]]"]


def tiny(*overrides):
    return load_config("digits", TINY_DIGITS + list(overrides))


def digits_batch(n=16):
    cfg = tiny()
    return load_dataset(cfg, "train").float_batch(slice(0, n))


# -- losses on hand-computed values ----------------------------------------------------------------------------


def test_hinge_losses_on_hand_computed_values():
    real, fake = torch.tensor([0.5, 2.0]), torch.tensor([-2.0, 0.0])
    # D: mean(relu(1 - [0.5, 2])) + mean(relu(1 + [-2, 0])) = mean(0.5, 0) + mean(0, 1)
    assert float(hinge_discriminator_loss(real, fake)) == pytest.approx(0.25 + 0.5)
    # G_z, G_x: mean(s_real) - mean(s_fake) = 1.25 - (-1)
    assert float(hinge_generator_loss(real, fake)) == pytest.approx(2.25)


def test_alice_cycle_term_on_hand_computed_values():
    x, x_cycle = torch.tensor([[1.0, 2.0]]), torch.tensor([[0.0, 4.0]])
    z, z_cycle = torch.tensor([[1.0]]), torch.tensor([[-1.0]])
    assert float(alice_cycle_loss(x, x_cycle, z, z_cycle, "l1")) == pytest.approx((1 + 2) / 2 + 2)
    assert float(alice_cycle_loss(x, x_cycle, z, z_cycle, "l2")) == pytest.approx((1 + 4) / 2 + 4)


@pytest.mark.parametrize("norm", ["l1", "l2"])
def test_alice_term_in_the_game_is_the_cycle_through_its_own_networks(norm):
    game = ALIGame(tiny(*DETERMINISTIC, "train.alice=0.5", f"train.alice_norm={norm}"), CPU)
    x, z = digits_batch(8), torch.randn(8, 4)
    with torch.no_grad():
        z_hat, x_tilde = game.encoder(x)[0], game.decoder(z)
        loss_g, extra = game._add_alice(torch.tensor(1.0), x, None, z, z_hat, x_tilde)
        dx, dz = x - game.model.decoder(z_hat), z - game.model.encoder(x_tilde)[0]
    power = 1 if norm == "l1" else 2
    by_hand = dx.abs().pow(power).mean() + dz.abs().pow(power).mean()
    torch.testing.assert_close(extra["alice"], by_hand)
    torch.testing.assert_close(loss_g, 1.0 + 0.5 * by_hand)
    off = ALIGame(tiny(*DETERMINISTIC), CPU)
    assert off._add_alice(torch.tensor(1.0), x, None, z, z_hat, x_tilde) == (torch.tensor(1.0), {})
    assert "alice" in game.step(x) and "alice" not in off.step(x)


# -- each switch off is the paper's step, bit for bit --------------------------------------------------------


def reference_step(model, opt_d, opt_g, x, latent, loss="bce"):
    """The ALI step as it was before the switches (one forward graph, two restricted backward passes), with
    the loss formulas written out here."""
    n = x.shape[0]
    z = torch.randn(n, latent)
    z_hat = reparametrize(*model.encoder(x))
    x_tilde = model.decoder(z)
    logits = model.discriminator(torch.cat([x, x_tilde]), torch.cat([z_hat, z]))
    real, fake = logits[:n], logits[n:]
    if loss == "bce":
        loss_d = F.softplus(-real).mean() + F.softplus(fake).mean()
        loss_g = F.softplus(real).mean() + F.softplus(-fake).mean()
    else:  # BigBiGAN's hinge: relu(1 - s_real) + relu(1 + s_fake) for D, s_real - s_fake for G_z, G_x
        loss_d = torch.relu(1 - real).mean() + torch.relu(1 + fake).mean()
        loss_g = real.mean() - fake.mean()
    d_params = list(model.discriminator.parameters())
    g_params = list(model.encoder.parameters()) + list(model.decoder.parameters())
    opt_d.zero_grad(set_to_none=True)
    opt_g.zero_grad(set_to_none=True)
    loss_d.backward(inputs=d_params, retain_graph=True)
    loss_g.backward(inputs=g_params)
    opt_d.step()
    opt_g.step()
    return float(loss_d.detach()), float(loss_g.detach())


@pytest.mark.parametrize("switches", [OFF, ["train.loss=hinge"], ["train.ema=0.9"]], ids=["all-off", "hinge", "ema"])
def test_step_matches_the_reference_bit_for_bit(switches):
    """All switches off: the same losses and weights as the step before the switches existed. Hinge: the same
    step with the hinge formulas. EMA: the raw networks' trajectory is untouched by the average."""
    cfg = tiny(*switches)
    torch.manual_seed(0)
    game = ALIGame(cfg, CPU)
    model = copy.deepcopy(game.model)
    betas = (cfg.train.beta1, cfg.train.beta2)
    # fused: the game's optimizer (trainers/speed.py); the foreach kernel rounds differently in the last bit
    opt_d = torch.optim.Adam(model.discriminator.parameters(), lr=cfg.train.lr, betas=betas, fused=True)
    opt_g = torch.optim.Adam([*model.encoder.parameters(), *model.decoder.parameters()], lr=cfg.train.lr,
                             betas=betas, fused=True)
    x = digits_batch(16)
    for step in range(3):
        torch.manual_seed(100 + step)
        got = game.step(x)
        torch.manual_seed(100 + step)
        want = reference_step(model, opt_d, opt_g, x, cfg.model.latent_dim, cfg.train.loss)
        assert (float(got["loss_d"]), float(got["loss_g"])) == want
    for (name, a), b in zip(game.model.state_dict().items(), model.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


# -- spectral norm ---------------------------------------------------------------------------------------------


def _d_weights(discriminator):
    return {name: m.weight for name, m in discriminator.named_modules()
            if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))}


def test_spectral_norm_bounds_every_d_weight_near_1():
    game = ALIGame(tiny("model.spectral_norm=true", "model.disc_unary=true"), CPU)
    plain = ALIGame(tiny("model.disc_unary=true"), CPU)
    x = digits_batch(16)
    for _ in range(4):
        game.step(x)
        plain.step(x)
    game.train(False)
    with torch.no_grad():
        weights = _d_weights(game.model.discriminator)
        # conv rows, the joint rows and the unary score heads s_x, s_z
        assert {"x_score", "z_score"} <= set(weights) and len(weights) == 8
        for name, w in weights.items():
            sigma = torch.linalg.matrix_norm(w.reshape(w.shape[0], -1), ord=2)
            assert abs(float(sigma) - 1.0) < 0.05, (name, float(sigma))
        for name, w in _d_weights(plain.model.discriminator).items():  # N(0, 0.01) init, no normalisation
            assert float(torch.linalg.matrix_norm(w.reshape(w.shape[0], -1), ord=2)) < 0.5, name


# -- EMA --------------------------------------------------------------------------------------------------------


def test_ema_follows_the_formula_and_differs_from_the_raw_weights():
    d = 0.9
    game = ALIGame(tiny(f"train.ema={d}"), CPU)
    nets = {"encoder": game.model.encoder, "decoder": game.model.decoder}
    averages = {name: game.modules()[f"{name}_ema"] for name in nets}
    before = {name: [p.detach().clone() for p in averages[name].parameters()] for name in nets}
    game.step(digits_batch(16))
    for name, net in nets.items():
        for e0, e1, w in zip(before[name], averages[name].parameters(), net.parameters(), strict=True):
            assert torch.equal(e1, d * e0 + (1 - d) * w)  # e <- d e + (1 - d) w, exactly
        assert any(not torch.equal(e, w) for e, w in zip(averages[name].parameters(), net.parameters(), strict=True))
        for kept, current in zip(averages[name].buffers(), net.buffers(), strict=True):
            assert torch.equal(kept, current)  # batch-norm statistics copied
    z = torch.randn(4, 4)
    game.train(False)
    torch.testing.assert_close(game.sample(z), averages["decoder"](z))  # pictures come from the average


def _run(cfg, run_dir, max_steps, resume=False):
    trainer = Trainer(with_train(cfg, max_steps=max_steps, epochs=100, batch_size=8), run_dir,
                      train_data=small_train_set(cfg, 48), log=lambda msg: None)
    trainer.resume() if resume else trainer.start_fresh()
    trainer.fit()
    return trainer


def test_ema_state_survives_resume_bit_identically(tmp_path):
    cfg = tiny("train.ema=0.8")
    straight = _run(cfg, tmp_path / "straight", max_steps=8)
    _run(cfg, tmp_path / "resumed", max_steps=5)  # 6 steps per epoch: stops inside epoch 1
    resumed = _run(cfg, tmp_path / "resumed", max_steps=8, resume=True)
    assert set(straight.game.modules()) == {"encoder", "decoder", "discriminator", "encoder_ema", "decoder_ema"}
    for name, module in straight.game.modules().items():
        other = resumed.game.modules()[name].state_dict()
        for key, value in module.state_dict().items():
            assert torch.equal(value, other[key]), f"{name}.{key}"
    # The run's users get the average by default, the raw weights on request.
    checkpoint = tmp_path / "straight" / "checkpoint.pt"
    average, raw = TorchBackend(checkpoint), TorchBackend(checkpoint, raw_weights=True)
    assert (average.meta.weights, raw.meta.weights) == ("ema", "raw")
    z = np.random.default_rng(0).standard_normal((3, 4)).astype(np.float32)
    with torch.no_grad():
        want = straight.game.modules()["decoder_ema"](torch.from_numpy(z)).numpy()
    np.testing.assert_array_equal(average.decode(z), want)
    assert not np.array_equal(average.decode(z), raw.decode(z))


def test_export_raw_weights(tmp_path):
    from alitool.export.onnx import read_meta
    from alitool.export.pipeline import ExportOptions, export_checkpoint

    run = _run(tiny("train.ema=0.8"), tmp_path / "run", max_steps=3)
    report = export_checkpoint(run.run_dir, ExportOptions(out=tmp_path / "raw", raw_weights=True,
                                                          exporter="torchscript"), log=lambda msg: None)
    assert read_meta(report.files[0])[0].weights == "raw"
    from alitool.backends import load_backend

    z = np.random.default_rng(0).standard_normal((5, 4)).astype(np.float32)
    np.testing.assert_allclose(load_backend(tmp_path / "raw").decode(z),
                               TorchBackend(run.checkpoint_path, raw_weights=True).decode(z), rtol=1e-3, atol=1e-5)


# -- where a switch does not apply, one line ------------------------------------------------------------------


def test_switch_values_and_games_without_them_are_refused():
    with pytest.raises(UserError, match="config key 'train.loss' is 'wgan'"):
        tiny("train.loss=wgan")
    with pytest.raises(UserError, match=r"config key 'train.ema' is 1.0; expected a number in \[0, 1\)"):
        tiny("train.ema=1.0")
    with pytest.raises(UserError, match="config key 'train.alice_norm' is 'l3'"):
        tiny("train.alice=1", "train.alice_norm=l3")
    mixture = ["model.latent_dim=2"]
    with pytest.raises(UserError, match="the gan game does not implement train.loss=hinge"):
        GANGame(load_config("mixture25", [*mixture, "train.loss=hinge"]), CPU)
    with pytest.raises(UserError, match="the vae game does not implement train.ema=0.99"):
        VAEGame(load_config("mixture25", [*mixture, "train.ema=0.99"]), CPU)
    semi = ["train.semi_supervised.labels=20"]
    with pytest.raises(UserError, match="ali-kplus1 game does not implement model.conditional"):
        SemiSupervisedGame(tiny(*semi, "model.conditional=true", "model.y_kind=class", "model.y_names=[a,b]"), CPU)
    game = SemiSupervisedGame(tiny(*semi, "model.spectral_norm=true"), CPU)  # spectral norm is part of D: allowed
    assert any("parametrizations" in k for k in game.model.discriminator.state_dict())
