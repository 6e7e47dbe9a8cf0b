"""The 2-D experiment's pieces (paper section 4.5): the mixture25 data, the metrics, and the model switches it
added (encoder noise input, BigBiGAN unary scores, PyTorch default init, alternating update, linear lr decay)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from alitool.config import load_config
from alitool.data import load_dataset
from alitool.data.mixture import STD, mixture_means, sample_mixture
from alitool.errors import UserError
from alitool.experiments.mixture_experiment import code_metrics, modes_held, nearest_mode, sample_metrics, summary_table
from alitool.models import ALI, Discriminator, Encoder, NoiseInput
from alitool.trainers.ali import ALIGame
from alitool.trainers.loop import schedule_learning_rates

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def cfg():
    return load_config("mixture25")


def test_splits_are_the_paper_mixture_and_disjoint(cfg):
    train, val = load_dataset(cfg, "train"), load_dataset(cfg, "val")
    assert train.x.shape == (100_000, 2) and train.x.dtype == np.float32
    assert val.x.shape == (10_000, 2)
    # every point sits in the mode it was drawn from, at the paper's spread
    idx, dist = nearest_mode(train.x)
    assert (idx == train.y).all()
    assert abs(np.sqrt((dist**2).mean() / 2) - STD) < 0.002
    assert np.bincount(train.y, minlength=25).min() > 3500  # all 25 equally likely
    assert not (set(map(tuple, val.x[:2000].tolist())) & set(map(tuple, train.x.tolist())))
    np.testing.assert_array_equal(load_dataset(cfg, "train").x[:100], train.x[:100])  # reproducible


def test_wrong_shape_config_is_one_clear_error(cfg):
    bad = load_config("mixture25", ["data.image_size=8"])
    with pytest.raises(UserError, match="image_size: 0"):
        load_dataset(bad, "train")
    with pytest.raises(UserError, match="splits"):
        load_dataset(cfg, "extra")


def test_metrics_on_known_distributions():
    x, _ = sample_mixture(10_000, seed=7)
    modes, quality = sample_metrics(x)
    assert modes == 25
    assert abs(quality - (1 - math.exp(-4.5))) < 0.005  # P(|N(0, s^2 I_2)| < 3s) = 1 - e^-4.5
    collapsed = mixture_means()[12] + 0.01 * np.random.default_rng(0).standard_normal((500, 2))
    assert sample_metrics(collapsed) == (1, 1.0)
    assert sample_metrics(collapsed + 0.5)[1] == 0.0  # off the mode: covered, but not within 3 std
    z = np.random.default_rng(1).standard_normal((20_000, 2))
    mean_err, cov_err = code_metrics(z)
    assert mean_err < 0.03 and cov_err < 0.06
    assert abs(code_metrics(2 * z)[1] - 3 * math.sqrt(2)) < 0.2  # cov 4 I: ||3 I||_F


def test_modes_held_needs_a_tenth_of_a_modes_share_where_the_papers_count_needs_one_sample():
    means = mixture_means()
    # 10,000 samples: 40 (a tenth of the even 400) on each of modes 1-5, 1 on each of modes 6-24, the rest on mode 0
    samples = np.concatenate([np.repeat(means[:1], 10_000 - 5 * 40 - 19, axis=0),
                              np.repeat(means[1:6], 40, axis=0), means[6:]])
    assert len(samples) == 10_000
    assert sample_metrics(samples)[0] == 25 and modes_held(samples) == 6
    one_short = np.concatenate([samples[:-19 - 1], means[6:]])  # mode 5 keeps 39 of its 40
    assert len(one_short) == 9_999 and modes_held(one_short) == 5
    assert modes_held(np.repeat(means, 400, axis=0)) == 25


def test_summary_table_reports_mean_std_min_max():
    run = {"modes": 25, "high_quality": 0.9, "recon_agreement": 0.8, "z_mean_error": 0.1, "z_cov_error": 0.2,
           "seconds": 60.0, "cpu_seconds": 50.0}
    table = summary_table({"ali": [run, {**run, "modes": 23}],
                           "gan": [{**run, "recon_agreement": math.nan, "z_mean_error": math.nan,
                                    "z_cov_error": math.nan}]})
    ali = next(line for line in table.splitlines() if line.startswith("| ali"))
    assert "| 24.0 ± 1.4 | 23 | 25 | 1/2 |" in ali and "90.0 ± 0.0 %" in ali
    gan = next(line for line in table.splitlines() if line.startswith("| gan"))
    assert gan.count("n/a") == 4  # no encoder (3 columns), and no modes_held in these runs
    assert "| gan | 1 | 25.0 | 25 | 25 | 1/1 | n/a | 90.0 % |" in gan and "±" not in gan  # one run: no spread
    # modes held: runs measured before the column existed are left out and counted
    held = summary_table({"ali": [{**run, "modes_held": 20}, {**run, "modes_held": 24}, run]}).splitlines()[-1]
    assert "| 3/3 | 22.0 ± 2.8 (2 of 3 runs) | 90.0 ± 0.0 % |" in held


def test_summary_table_counts_every_session_of_a_continued_run():
    """A continued run's own seconds are its last session's: the cost columns take its whole-run sums, and a run
    without a whole CPU figure (epochs from before it was recorded) is left out and counted, not averaged in."""
    run = {"modes": 25, "high_quality": 0.9, "recon_agreement": 0.8, "z_mean_error": 0.1, "z_cov_error": 0.2,
           "seconds": 60.0, "cpu_seconds": 50.0}
    continued = {**run, "seconds": 20.0, "cpu_seconds": 15.0, "continued_from_step": 700,
                 "training_seconds_all_sessions": 80.0, "cpu_seconds_all_sessions": 70.0}
    row = summary_table({"ali": [run, continued]}).splitlines()[-1]
    assert row.endswith("| 70 ± 14 | 60 ± 14 |"), row
    older = {k: v for k, v in continued.items() if k != "cpu_seconds_all_sessions"}
    row = summary_table({"ali": [run, older]}).splitlines()[-1]
    assert row.endswith("| 70 ± 14 | 50 (1 of 2 runs) |"), row


def test_encoder_noise_input_is_stochastic_in_training_and_deterministic_in_eval(cfg):
    enc = Encoder(cfg)
    assert isinstance(enc.stack, NoiseInput)
    x = torch.randn(64, 2)
    enc.eval()
    torch.testing.assert_close(enc(x)[0], enc(x)[0])
    assert not torch.allclose(enc.sample(x), enc.sample(x))  # q(z | x) draws noise in eval mode too
    enc.train()
    assert not torch.allclose(enc(x)[0], enc(x)[0])
    enc(x)[0].sum().backward()
    assert all(p.grad is not None for p in enc.parameters())
    assert not isinstance(Encoder(load_config("digits")).stack, NoiseInput)  # the image models are unchanged
    with pytest.raises(UserError, match="linear"):
        Encoder(load_config("digits", ["model.encoder_noise_dim=2"]))


def test_unary_scores_sum_to_the_total_score(cfg):
    disc = Discriminator(cfg)
    x, z = torch.randn(8, 2), torch.randn(8, 2)
    terms = disc(x, z, terms=True)
    assert len(terms) == 3 and all(t.shape == (8,) for t in terms)
    torch.testing.assert_close(disc(x, z), terms[0] + terms[1] + terms[2])
    plain = Discriminator(load_config("mixture25", ["model.disc_unary=false"]))
    (joint,) = plain(x, z, terms=True)
    torch.testing.assert_close(plain(x, z), joint)
    with pytest.raises(UserError, match="D\\(x\\) and D\\(z\\) tables"):
        Discriminator(load_config("mixture25_paper", ["model.disc_unary=true"]))


def test_init_std_zero_keeps_pytorch_init(cfg):
    biases = [m.bias for m in ALI(cfg).decoder.modules() if isinstance(m, torch.nn.Linear)]
    assert all(b.abs().sum() > 0 for b in biases)  # no positively homogeneous ReLU net at the start
    paper = ALI(load_config("mixture25_paper"))
    assert all(m.bias is None or m.bias.abs().sum() == 0 for m in paper.modules() if isinstance(m, torch.nn.Linear))


@pytest.mark.parametrize("update", ["simultaneous", "alternating"])
def test_both_updates_move_every_player(update):
    torch.manual_seed(0)
    game = ALIGame(load_config("mixture25", [f"train.update={update}"]), CPU)
    before = {k: [p.clone() for p in m.parameters()] for k, m in game.modules().items()}
    out = game.step(torch.from_numpy(sample_mixture(64, 0)[0]))
    assert all(math.isfinite(float(v)) for v in out.values())
    for name, module in game.modules().items():
        assert any(not torch.equal(a, b) for a, b in zip(before[name], module.parameters(), strict=True)), name


def test_unknown_update_is_refused_when_the_config_loads():
    with pytest.raises(UserError, match="config key 'train.update' is 'sideways'"):
        load_config("mixture25", ["train.update=sideways"])


def test_linear_schedule_decays_to_zero_and_survives_a_resume():
    game = ALIGame(load_config("mixture25", ["train.lr=1e-3"]), CPU)
    schedule_learning_rates(game, "linear", 0, 100)
    assert game.opt_d.param_groups[0]["lr"] == pytest.approx(1e-3)
    schedule_learning_rates(game, "linear", 75, 100)
    assert game.opt_g.param_groups[0]["lr"] == pytest.approx(2.5e-4)
    resumed = ALIGame(load_config("mixture25", ["train.lr=1e-3"]), CPU)
    resumed.opt_g.load_state_dict(game.opt_g.state_dict())  # what Trainer.resume does
    schedule_learning_rates(resumed, "linear", 99, 100)
    assert resumed.opt_g.param_groups[0]["lr"] == pytest.approx(1e-5)
    schedule_learning_rates(resumed, "constant", 99, 100)  # constant leaves the rate alone
    assert resumed.opt_g.param_groups[0]["lr"] == pytest.approx(1e-5)
