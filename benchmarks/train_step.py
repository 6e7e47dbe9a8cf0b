"""Time one ALI training step of the paper's SVHN architecture (table 4, batch 100) several ways, in one run.

(a) naive: the common public-port structure, a D update and then a G update, each with its own forward pass, on
    stock torch layers (nn.Conv2d, nn.ConvTranspose2d, nn.Dropout);
(b) alitool's default step: one forward graph, two restricted backward passes, simultaneous Adam steps;
(c) alitool with each speed switch: bf16 autocast, channels_last, both, torch.compile (with --compile).

Prints seconds per step (median of --steps after --warmup) and the ratio to (a) and to (b).

    python benchmarks/train_step.py [--config svhn] [--batch 100] [--steps 6] [--compile]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import torch

from alitool.config import load_config, with_train
from alitool.layers import TableConv2d, TableConvTranspose2d, TableDropout
from alitool.models import ALI
from alitool.trainers.ali import ALIGame
from alitool.trainers.losses import discriminator_loss, generator_loss


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


def time_steps(game, x, warmup: int, steps: int) -> tuple[float, float]:
    """Median wall seconds and median CPU seconds (all threads of this process) per step. On shared cores the
    CPU time is the steadier figure: it is what the step costs, whoever else holds the machine."""
    for _ in range(warmup):
        game.step(x)
    wall, cpu = [], []
    for _ in range(steps):
        start, start_cpu = time.perf_counter(), time.process_time()
        game.step(x)
        wall.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    return statistics.median(wall), statistics.median(cpu)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="svhn")
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--compile", action="store_true", help="also time torch.compile (slow to compile on CPU)")
    args = parser.parse_args()

    torch.manual_seed(0)
    base = with_train(load_config(args.config), batch_size=args.batch, precision="fp32")
    device = torch.device("cpu")
    x = torch.rand(args.batch, base.data.channels, base.data.image_size, base.data.image_size)
    variants = [
        ("(a) naive: two forward passes, stock layers", lambda: NaiveGame(base, device)),
        ("(b) alitool default (fp32)", lambda: ALIGame(base, device)),
        ("(c) bf16 autocast", lambda: ALIGame(with_train(base, precision="bf16"), device)),
        ("(c) channels_last", lambda: ALIGame(with_train(base, channels_last=True), device)),
        ("(c) bf16 + channels_last", lambda: ALIGame(with_train(base, precision="bf16", channels_last=True), device)),
    ]
    if args.compile:
        variants.append(("(c) torch.compile (fp32)", lambda: ALIGame(with_train(base, compile=True), device)))
        variants.append(("(c) bf16 + channels_last + compile", lambda: ALIGame(
            with_train(base, precision="bf16", channels_last=True, compile=True), device)))
    print(f"# {args.config} architecture, batch {args.batch}, {torch.get_num_threads()} threads, torch "
          f"{torch.__version__}, {platform.processor() or platform.machine()}, load {os.getloadavg()[0]:.2f}")
    print("| step | wall s/step | CPU s/step | speed-up vs (a) naive (CPU) | vs (b) default (CPU) |")
    print("|---|---|---|---|---|")
    results = {}
    for label, make in variants:
        torch.manual_seed(0)
        wall, cpu = results[label] = time_steps(make(), x, args.warmup, args.steps)
        naive = results[variants[0][0]][1]
        default = results.get(variants[1][0], results[label])[1]
        print(f"| {label} | {wall:.3f} | {cpu:.3f} | {naive / cpu:.2f}x | {default / cpu:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
