"""Time one ALI training step of the paper's SVHN architecture (table 4, batch 100) several ways, in one run.

(a) naive: the common public-port structure, a D update and then a G update, each with its own forward pass, on
    stock torch layers (nn.Conv2d, nn.ConvTranspose2d, nn.Dropout);
(b) alitool's default step, the config as shipped: one forward graph, two restricted backward passes, fused Adam,
    and the config's speed switches (for SVHN on a CPU with native bf16: bf16 autocast + channels_last, which
    also turns on the small-map im2col products of alitool/conv_gemm.py);
(c) the same step with every switch off (fp32, NCHW), then each switch alone, then bf16 + channels_last without
    the im2col products, and torch.compile (with --compile).

Prints seconds per step (median over --steps rounds after --warmup; the variants take turns, one step each per
round) and the ratios to (a) and to (c) with switches off,
then the optimizer step alone: fused Adam against the foreach kernel, on the same parameters.

    python benchmarks/train_step.py [--config svhn] [--batch 100] [--steps 10] [--compile]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import statistics
import time

import torch

from alitool import conv_gemm
from alitool.config import load_config, with_train
from alitool.layers import TableConv2d, TableConvTranspose2d, TableDropout
from alitool.models import ALI
from alitool.trainers.ali import ALIGame
from alitool.trainers.losses import discriminator_loss, generator_loss
from alitool.trainers.speed import describe_precision


def with_stock_layers(model: torch.nn.Module) -> torch.nn.Module:
    """The same modules and weights, run by torch's own layer classes instead of alitool/layers.py."""
    stock = {TableConv2d: torch.nn.Conv2d, TableConvTranspose2d: torch.nn.ConvTranspose2d,
             TableDropout: torch.nn.Dropout}
    for module in model.modules():
        module.__class__ = stock.get(type(module), type(module))
    return model


class NaiveGame:
    """Two forward passes per step: D on detached samples, then E/G through D again."""

    def __init__(self, cfg, device):
        self.cfg, self.model = cfg, with_stock_layers(ALI(cfg).to(device))
        t = cfg.train
        self.opt_d = torch.optim.Adam(self.model.discriminator.parameters(), lr=t.lr, betas=(t.beta1, t.beta2))
        self.opt_g = torch.optim.Adam(self.model.generator_parameters(), lr=t.lr, betas=(t.beta1, t.beta2))

    def step(self, x):
        m, n = self.model, x.shape[0]
        z = torch.randn(n, self.cfg.model.latent_dim)
        with torch.no_grad():
            z_hat, x_tilde = m.encoder.sample(x), m.decoder(z)
        loss_d = discriminator_loss(m.discriminator(x, z_hat), m.discriminator(x_tilde, z))
        self.opt_d.zero_grad()
        loss_d.backward()
        self.opt_d.step()
        loss_g = generator_loss(m.discriminator(x, m.encoder.sample(x)), m.discriminator(m.decoder(z), z))
        self.opt_g.zero_grad()
        loss_g.backward()
        self.opt_g.step()


class WithoutProducts:
    """A game whose small-map convolutions run in oneDNN, as before alitool/conv_gemm.py."""

    def __init__(self, game):
        self.game = game

    def step(self, x):
        with products_off():
            return self.game.step(x)


@contextlib.contextmanager
def products_off():
    saved, conv_gemm.MAX_GEMM_POSITIONS = conv_gemm.MAX_GEMM_POSITIONS, 0
    try:
        yield
    finally:
        conv_gemm.MAX_GEMM_POSITIONS = saved


def time_interleaved(games: list, x, warmup: int, rounds: int) -> list[tuple[float, float]]:
    """Median wall seconds and median CPU seconds (all threads of this process) per step of each game. The games
    take turns, one step each per round, so a slow spell of a shared machine (these VMs' cores are time-shared:
    the same step measured 0.36-0.60 s back to back) lands on all of them alike. CPU time is the steadier
    figure: it is what the step costs, whoever else holds the machine."""
    for game in games:
        for _ in range(warmup):
            game.step(x)
    wall: list[list[float]] = [[] for _ in games]
    cpu: list[list[float]] = [[] for _ in games]
    for _ in range(rounds):
        for i, game in enumerate(games):
            start, start_cpu = time.perf_counter(), time.process_time()
            game.step(x)
            wall[i].append(time.perf_counter() - start)
            cpu[i].append(time.process_time() - start_cpu)
    return [(statistics.median(w), statistics.median(c)) for w, c in zip(wall, cpu, strict=True)]


def time_optimizers(cfg, steps: int) -> list[tuple[str, float]]:
    """ms per Adam step over all of the model's parameters (random gradients): fused against foreach."""
    params = list(ALI(cfg).parameters())
    for p in params:
        p.grad = torch.randn_like(p)
    t = cfg.train
    results = []
    for label, kind in (("fused (alitool)", {"fused": True}), ("foreach (torch's default)", {"foreach": True})):
        opt = torch.optim.Adam(params, lr=t.lr, betas=(t.beta1, t.beta2), **kind)
        opt.step()
        start = time.perf_counter()
        for _ in range(steps):
            opt.step()
        results.append((label, 1000 * (time.perf_counter() - start) / steps))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="svhn")
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--steps", type=int, default=10, help="rounds: one step of each variant per round")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--compile", action="store_true", help="also time torch.compile (slow to compile on CPU)")
    args = parser.parse_args()

    torch.manual_seed(0)
    shipped = with_train(load_config(args.config), batch_size=args.batch)
    off = with_train(shipped, precision="fp32", channels_last=False)
    device = torch.device("cpu")
    x = torch.rand(args.batch, off.data.channels, off.data.image_size, off.data.image_size)
    fast = with_train(off, precision="bf16", channels_last=True)
    variants = [
        ("(a) naive: two forward passes, stock layers, fp32", lambda: NaiveGame(off, device)),
        (f"(b) alitool default: {describe_precision(shipped, device)}", lambda: ALIGame(shipped, device)),
        ("(c) every switch off: fp32, NCHW", lambda: ALIGame(off, device)),
        ("(c) bf16 autocast", lambda: ALIGame(with_train(off, precision="bf16"), device)),
        ("(c) channels_last", lambda: ALIGame(with_train(off, channels_last=True), device)),
        ("(c) bf16 + channels_last", lambda: ALIGame(fast, device)),
        ("(c) bf16 + channels_last, no im2col products", lambda: WithoutProducts(ALIGame(fast, device))),
    ]
    if args.compile:
        variants.append(("(c) torch.compile (fp32)", lambda: ALIGame(with_train(off, compile=True), device)))
        variants.append(("(c) bf16 + channels_last + compile", lambda: ALIGame(with_train(fast, compile=True),
                                                                                 device)))
    print(f"# {args.config} architecture, batch {args.batch}, {torch.get_num_threads()} threads, torch "
          f"{torch.__version__}, {platform.processor() or platform.machine()}, load {os.getloadavg()[0]:.2f}")
    print("| step | wall s/step | CPU s/step | speed-up vs (a) naive (CPU) | vs every switch off (CPU) |")
    print("|---|---|---|---|---|")
    games = []
    for _, make in variants:
        torch.manual_seed(0)
        games.append(make())
    times = time_interleaved(games, x, args.warmup, args.steps)
    naive, plain = times[0][1], times[2][1]
    for (label, _), (wall, cpu) in zip(variants, times, strict=True):
        print(f"| {label} | {wall:.3f} | {cpu:.3f} | {naive / cpu:.2f}x | {plain / cpu:.2f}x |")
    print("\n| Adam step, all parameters | ms |\n|---|---|")
    for label, ms in time_optimizers(off, steps=10):
        print(f"| {label} | {ms:.1f} |")


if __name__ == "__main__":
    main()
