"""Measuring the paper's 2-D experiment (Dumoulin et al. 2017, section 4.5, figure 8): metrics, table, figure.

Metrics of one trained model, all on fixed draws so that two evaluations of a checkpoint agree:
- ``modes``: draw 10,000 samples from p(x) = G_x(z), z ~ N(0, I), assign each to the mixture component of
  highest responsibility, count the components that received at least one sample (the paper's measure). The
  components have equal weights and the same isotropic covariance, so the highest responsibility is the
  nearest mean.
- ``high_quality``: the fraction of those samples within 3 standard deviations (0.15) of their component's
  mean, the stricter measure (a model can "cover" every mode with a few stray points).
- ``recon_agreement``: encode each of the 10,000 held-out points with a draw from q(z | x), decode it, and
  count the reconstructions that land in the component the point was drawn from.
- ``z_mean_error``, ``z_cov_error``: q(z) = E_x q(z | x) against p(z) = N(0, I) on the held-out codes:
  ||mean||_2 and ||cov - I||_F.
Models without an encoder (the plain GAN) get NaN for the last three.
"""

from __future__ import annotations

import io
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from alitool.atomic import atomic_write_bytes
from alitool.checkpoint import load_checkpoint
from alitool.data.mixture import STD, mixture_means, sample_mixture
from alitool.errors import UserError

N_SAMPLES = 10_000
HELD_OUT_SEED = 3  # the mixture25 "test" split (alitool.data.mixture.SPLIT_SEEDS)
SAMPLE_SEED = 12345  # the z draws every model's samples are measured on
QUALITY_RADIUS = 3 * STD
# "modes held": a mode counts only if it holds at least this fraction of an even share of the samples (1/25 each).
# The paper's count takes any one sample of 10,000 as covering a mode, which hides a model that piles its samples
# on a few modes and leaves a handful on the others.
HELD_SHARE = 0.1


@dataclass
class MixtureMetrics:
    modes: int
    high_quality: float
    modes_held: int  # modes holding at least HELD_SHARE of an even share of the samples
    recon_agreement: float = math.nan
    z_mean_error: float = math.nan
    z_cov_error: float = math.nan

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


def nearest_mode(points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(component of highest responsibility, distance to its mean) for float [N, 2] points."""
    d = np.linalg.norm(points[:, None, :].astype(np.float64) - mixture_means()[None], axis=2)
    idx = d.argmin(axis=1)
    return idx, d[np.arange(len(points)), idx]


def sample_metrics(samples: np.ndarray) -> tuple[int, float]:
    """(modes covered, fraction of samples within 3 std of their mode)."""
    idx, dist = nearest_mode(samples)
    return int(len(np.unique(idx))), float((dist < QUALITY_RADIUS).mean())


def modes_held(samples: np.ndarray, total_modes: int = 25) -> int:
    """Modes that are nearest to at least ``HELD_SHARE`` x N / 25 of the N samples (the paper's count needs one)."""
    counts = np.bincount(nearest_mode(samples)[0], minlength=total_modes)
    return int((counts >= HELD_SHARE * len(samples) / total_modes).sum())


def code_metrics(z: np.ndarray) -> tuple[float, float]:
    """q(z) against N(0, I): (||mean||_2, ||cov - I||_F)."""
    mean_error = float(np.linalg.norm(z.mean(axis=0)))
    cov = np.atleast_2d(np.cov(z.astype(np.float64), rowvar=False))
    return mean_error, float(np.linalg.norm(cov - np.eye(cov.shape[0])))


@dataclass
class RunNetworks:
    """A run's decoder and (where it has one) encoder, in eval mode, on the CPU."""

    decoder: torch.nn.Module
    encoder: torch.nn.Module | None
    latent_dim: int


def load_run_networks(checkpoint: str | Path) -> RunNetworks:
    from alitool.models import Decoder, Encoder
    from alitool.trained_networks import network_state

    payload = load_checkpoint(checkpoint)
    cfg, models = payload["config"], payload["models"]
    if "decoder" not in models:
        raise UserError(f"{checkpoint}: no decoder in this checkpoint")
    decoder = Decoder(cfg)
    decoder.load_state_dict(network_state(models, "decoder")[0])  # the weight average of train.ema, if kept
    encoder = None
    if "encoder" in models:
        encoder = Encoder(cfg)
        encoder.load_state_dict(network_state(models, "encoder")[0])
        encoder.eval()
    return RunNetworks(decoder.eval(), encoder, cfg.model.latent_dim)


@dataclass
class Draws:
    """What the metrics and the figure are computed from."""

    samples: np.ndarray  # G_x(z), z ~ N(0, I)
    held_out: np.ndarray  # x from the test split
    modes: np.ndarray  # the component each held-out x was drawn from
    codes: np.ndarray | None  # z ~ q(z | x) of the held-out x
    reconstructions: np.ndarray | None  # G_x(z) of those codes


@torch.no_grad()
def draw(nets: RunNetworks, n: int = N_SAMPLES) -> Draws:
    gen = torch.Generator().manual_seed(SAMPLE_SEED)
    samples = nets.decoder(torch.randn(n, nets.latent_dim, generator=gen)).numpy()
    x, modes = sample_mixture(n, HELD_OUT_SEED)
    codes = recon = None
    if nets.encoder is not None:
        torch.manual_seed(SAMPLE_SEED)  # the encoder's noise
        z = nets.encoder.sample(torch.from_numpy(x))
        codes, recon = z.numpy(), nets.decoder(z).numpy()
    return Draws(samples, x, modes, codes, recon)


def measure(d: Draws) -> MixtureMetrics:
    modes, quality = sample_metrics(d.samples)
    out = MixtureMetrics(modes, quality, modes_held(d.samples))
    if d.codes is not None and d.reconstructions is not None:
        out.recon_agreement = float((nearest_mode(d.reconstructions)[0] == d.modes).mean())
        out.z_mean_error, out.z_cov_error = code_metrics(d.codes)
    return out


# ----------------------------------------------------------------------------------------------------------
# The table over runs


def _mean_std(values: list[float], fmt: str) -> str:
    v = np.array([x for x in values if not math.isnan(x)], dtype=float)
    if len(v) == 0:
        return "n/a"
    if len(v) == 1:  # a spread over one run is undefined: no "± 0.0"
        return f"{v[0]:{fmt}}"
    return f"{v.mean():{fmt}} ± {v.std(ddof=1):{fmt}}"


def summary_table(results: dict[str, list[dict]], total_modes: int = 25) -> str:
    """Markdown: one row per model, each metric as mean ± std over its runs (std with ddof 1, like the paper's
    ± over 10 runs), the modes also as min / max and as the number of runs that covered all 25."""
    header = ("| model | runs | modes covered | min | max | runs with 25/25 | modes held (>= 1/10 share) | "
              "samples within 3 std | "
              "reconstruction agreement | q(z) mean error | q(z) cov error | train s / run | CPU s / run |")
    lines = [header, "|" + "---|" * (header.count("|") - 1)]
    for model, runs in results.items():
        if not runs:
            continue
        modes = [r["modes"] for r in runs]
        lines.append(
            f"| {model} | {len(runs)} | {_mean_std(modes, '.1f')} | {min(modes)} | {max(modes)} | "
            f"{sum(m == total_modes for m in modes)}/{len(runs)} | {_modes_held(runs)} | "
            f"{_mean_std([100 * r['high_quality'] for r in runs], '.1f')} % | "
            f"{_pct(runs, 'recon_agreement')} | {_mean_std([r['z_mean_error'] for r in runs], '.3f')} | "
            f"{_mean_std([r['z_cov_error'] for r in runs], '.3f')} | "
            f"{_whole_run_cost(runs, 'training_seconds_all_sessions', 'seconds')} | "
            f"{_whole_run_cost(runs, 'cpu_seconds_all_sessions', 'cpu_seconds')} |"
        )
    return "\n".join(lines) + "\n"


def _modes_held(runs: list[dict]) -> str:
    """Mean ± std of ``modes_held``; runs measured before it existed have none, and are left out and counted."""
    return _mean_std_of_known([r.get("modes_held", math.nan) for r in runs], ".1f")


def _whole_run_cost(runs: list[dict], all_sessions: str, this_session: str) -> str:
    """Mean ± std of a run's time over every session it trained in. A continued run's own ``seconds`` cover only
    its last session; one continued from epochs that predate per-epoch CPU time has no whole figure, and the cell
    says over how many runs it is taken rather than pass a part for the whole."""
    return _mean_std_of_known([r.get(all_sessions, math.nan) if r.get("continued_from_step") else r[this_session]
                               for r in runs], ".0f")


def _mean_std_of_known(values: list[float], fmt: str) -> str:
    """``_mean_std`` over the values that are not NaN, saying over how many runs when some are."""
    known = [v for v in values if not math.isnan(v)]
    text = _mean_std(known, fmt)
    return text if len(known) == len(values) or text == "n/a" else f"{text} ({len(known)} of {len(values)} runs)"


def _pct(runs: list[dict], key: str) -> str:
    text = _mean_std([100 * r[key] for r in runs], ".1f")
    return text if text == "n/a" else text + " %"


# ----------------------------------------------------------------------------------------------------------
# The figure (paper figure 8: one column per model)

ROWS = ("held-out data x", "codes z ~ q(z | x)", "reconstructions G_x(z)", "samples G_x(z), z ~ p(z)")


def mode_colours(modes: np.ndarray) -> np.ndarray:
    """A colour per mixture component that varies smoothly over the grid, so that neighbouring modes get
    neighbouring colours and the organisation of q(z) shows at a glance."""
    row, col = modes // 5, modes % 5
    return np.stack([0.1 + 0.8 * row / 4, 0.35 + 0.3 * (row + col) / 8, 0.9 - 0.8 * col / 4], axis=1)


def save_figure(path: Path, draws: dict[str, Draws], title: str = "") -> None:
    """One column per model, rows as ``ROWS``; points coloured by the mode of the held-out point they come
    from; samples in grey with the mixture means marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(draws)
    fig, axes = plt.subplots(len(ROWS), n, figsize=(max(2.8 * n, 6.0), 2.8 * len(ROWS)), dpi=110, squeeze=False)
    means = mixture_means()
    for j, (model, d) in enumerate(draws.items()):
        colours = mode_colours(d.modes)
        panels = (d.held_out, d.codes, d.reconstructions, d.samples)
        for i, points in enumerate(panels):
            ax = axes[i, j]
            ax.set_xticks([])
            ax.set_yticks([])
            if points is None:
                ax.text(0.5, 0.5, "no encoder", ha="center", va="center", transform=ax.transAxes, color="0.4")
                continue
            show = slice(0, 3000)  # enough to see the shape; all 10,000 are measured
            c = "0.25" if i == 3 else colours[show]
            ax.scatter(points[show, 0], points[show, 1], s=1.5, c=c, linewidths=0)
            if i != 1:
                ax.scatter(means[:, 0], means[:, 1], s=6, marker="x", c="red", linewidths=0.6)
                ax.set_xlim(-6, 6)
                ax.set_ylim(-6, 6)
            else:
                ax.set_xlim(-3.5, 3.5)
                ax.set_ylim(-3.5, 3.5)
            if i == 0:
                ax.set_title(model, fontsize=10)
            if j == 0:
                ax.set_ylabel(ROWS[i], fontsize=8)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    atomic_write_bytes(Path(path), lambda f: f.write(buf.getvalue()))
