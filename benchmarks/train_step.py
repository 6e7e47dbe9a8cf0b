"""Time one ALI training step of the paper's SVHN architecture (table 4, batch 100) several ways, in one run.

(a) naive: the common public-port structure, a D update and then a G update, each with its own forward pass, on
    stock torch layers (nn.Conv2d, nn.ConvTranspose2d, nn.Dropout);
(b) alitool's default step, the config as shipped: one forward graph, two restricted backward passes, fused Adam,
    and the config's speed switches (for SVHN: channels_last, bf16 autocast on a CPU with native bf16, and
    ``train.conv_path: auto``, each convolution the fastest way timed on this machine, alitool/conv_autotune.py);
    then the same with ``conv_path: rule`` (the fixed small-map bf16 rule of alitool/conv_gemm.py) and ``onednn``;
(c) the same step with every switch off (fp32, NCHW, conv_path onednn), then each switch alone, and
    torch.compile (with --compile).

The header says what the machine can do: CPU model and vector features, the class the convolutions may use (an
AVX-512 machine run with ``ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2 MKL_ENABLE_INSTRUCTIONS=AVX2`` stands
in for an AVX2 one, and says so), threads, the reported clock, and the FLOP floor of one step: its convolution
and matrix-product FLOPs (forward + backward, counted by torch.utils.flop_counter) over the class's peak.

Prints seconds per step (median over --steps rounds after --warmup; the variants take turns, one step each per
round; the first warm-up step of a ``conv_path: auto`` variant times the layer shapes this machine's cache lacks),
the ratios naive / variant in wall and CPU time and to (c) with switches off, and the share of the fp32 peak each
step reaches; then the optimizer step alone: fused Adam against the foreach kernel, on the same parameters.

    python benchmarks/train_step.py [--config svhn] [--batch 100] [--steps 10] [--compile] [--retune]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from alitool import conv_autotune, cpu_features
from alitool.config import load_config, with_train
from alitool.layers import TableConv2d, TableConvTranspose2d, TableDropout
from alitool.models import ALI
from alitool.trainers.ali import ALIGame
from alitool.trainers.losses import discriminator_loss, generator_loss
from alitool.trainers.speed import bf16_for, describe_precision

# Peak FLOPs per cycle and core of each vector class, as assumed here: fp32 fused multiply-adds on two FMA units
# (AVX2: 2 x 8 lanes x 2 FLOPs = 32; AVX-512: 2 x 16 x 2 = 64, half of that on parts with one 512-bit FMA unit);
# without FMA (AVX, SSE4.1) one add and one multiply unit. AMX has no fp32 arithmetic: its fp32 is AVX-512's.
FP32_FLOPS_PER_CYCLE = {"SSE4.1": 8, "AVX": 16, "AVX2": 32, "AVX-512": 64, "AVX-512 BF16": 64, "AMX": 64}
# bf16 where native: AVX-512 BF16's vdpbf16ps (16 lanes x 2 products x 2 FLOPs, two units) = 128; AMX-BF16's
# TDPBF16PS (16 x 16 x 32 multiply-adds per 16 cycles) = 1024.
BF16_FLOPS_PER_CYCLE = {"AVX-512 BF16": 128, "AMX": 1024}


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


def time_interleaved(games: list, checks: list, x, warmup: int, rounds: int) -> list[tuple[float, float]]:
    """Median wall seconds and median CPU seconds (all threads of this process) per step of each game. The games
    take turns, one step each per round, so a slow spell of a shared machine (these VMs' cores are time-shared:
    the same step measured 0.36-0.60 s back to back) lands on all of them alike. CPU time is the steadier
    figure: it is what the step costs, whoever else holds the machine. Each game's steps run under its
    ``StepCheck``, as the trainer runs them, and the check's own steps come before the warm-up."""
    for game, check in zip(games, checks, strict=True):
        while not check.settled:
            with check.step():
                game.step(x)
        for _ in range(warmup):
            with check.step():
                game.step(x)
    wall: list[list[float]] = [[] for _ in games]
    cpu: list[list[float]] = [[] for _ in games]
    for _ in range(rounds):
        for i, game in enumerate(games):
            start, start_cpu = time.perf_counter(), time.process_time()
            with checks[i].step():
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


def step_flops(game, x) -> int | None:
    """Convolution and matrix-product FLOPs of one step, forward and backward (None where they cannot be
    counted: a compiled step)."""
    if getattr(game, "cfg", None) is not None and game.cfg.train.compile:
        return None
    with FlopCounterMode(display=False) as counter:
        game.step(x)
    return counter.get_total_flops()


def peaks() -> tuple[str, float | None, float | None]:
    """(how the peak is reckoned, fp32 FLOP/s, bf16 FLOP/s or None where bf16 is not native)."""
    vector_class, _ = cpu_features.vector_class()
    mhz, threads = cpu_features.reported_mhz(), torch.get_num_threads()
    if vector_class is None or mhz is None:
        return "peak unknown (no x86 vector class or clock in /proc/cpuinfo)", None, None
    fp32 = threads * mhz * 1e6 * FP32_FLOPS_PER_CYCLE[vector_class]
    bf16_rate = BF16_FLOPS_PER_CYCLE.get(vector_class)
    bf16 = threads * mhz * 1e6 * bf16_rate if bf16_rate else None
    how = (f"{threads} threads x {mhz / 1000:.2f} GHz x {FP32_FLOPS_PER_CYCLE[vector_class]} fp32 FLOP/cycle "
           f"= {fp32 / 1e9:.0f} GFLOP/s")
    how += f"; bf16 x {bf16_rate} = {bf16 / 1e9:.0f} GFLOP/s" if bf16 else "; bf16 not native"
    return how, fp32, bf16


def print_header(args) -> None:
    print(f"# {args.config} architecture, batch {args.batch}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, load {os.getloadavg()[0]:.2f}")
    features = ", ".join(cpu_features.vector_features()) or "none of AVX2/AVX-512/AMX"
    mhz = cpu_features.reported_mhz()
    clock = f"{mhz:.0f} MHz reported (/proc/cpuinfo cpu MHz, not the turbo clock)" if mhz else "clock unknown"
    print(f"# CPU: {cpu_features.cpu_model()}; features: {features}; convolutions may use: "
          f"{cpu_features.describe_vector_class()}; ATen kernels: {torch.backends.cpu.get_cpu_capability()}; {clock}")
    limits = cpu_features.isa_limits()
    if limits:
        print("# kernel limits: " + " ".join(f"{k}={v}" for k, v in limits.items()))
        if cpu_features.vector_class()[1] and "MKL_ENABLE_INSTRUCTIONS" not in limits:
            print("# note: MKL_ENABLE_INSTRUCTIONS is not set, so MKL's fp32 matrix products (F.linear, the im2col "
                  "products) still use every vector feature of the CPU")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="svhn")
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--steps", type=int, default=10, help="rounds: one step of each variant per round")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--compile", action="store_true", help="also time torch.compile (slow to compile on CPU)")
    parser.add_argument("--retune", action="store_true",
                        help="time every layer shape again (into a temporary cache), not read this machine's cache")
    parser.add_argument("--emulated-bf16", action="store_true",
                        help="also time bf16 autocast where bf16 is not native (many times slower than fp32)")
    args = parser.parse_args()
    if args.retune:
        conv_autotune.start_over(path=Path(tempfile.mkdtemp()) / "conv_paths.json")

    torch.manual_seed(0)
    shipped = with_train(load_config(args.config), batch_size=args.batch)
    off = with_train(shipped, precision="fp32", channels_last=False, conv_path="onednn")
    device = torch.device("cpu")
    x = torch.rand(args.batch, off.data.channels, off.data.image_size, off.data.image_size)
    native_bf16 = bf16_for(with_train(off, precision="auto"), device)
    variants = [
        ("(a) naive: two forward passes, stock layers, fp32", lambda: NaiveGame(off, device)),
        (f"(b) alitool default: {describe_precision(shipped, device)}", lambda: ALIGame(shipped, device)),
        ("(b) the same, conv_path rule", lambda: ALIGame(with_train(shipped, conv_path="rule"), device)),
        ("(b) the same, conv_path onednn", lambda: ALIGame(with_train(shipped, conv_path="onednn"), device)),
        ("(c) every switch off: fp32, NCHW, conv_path onednn", lambda: ALIGame(off, device)),
        ("(c) conv_path auto", lambda: ALIGame(with_train(off, conv_path="auto"), device)),
        ("(c) channels_last", lambda: ALIGame(with_train(off, channels_last=True), device)),
    ]
    if native_bf16 or args.emulated_bf16:
        label = "(c) bf16 autocast" + ("" if native_bf16 else " (emulated: not native here)")
        variants.append((label, lambda: ALIGame(with_train(off, precision="bf16"), device)))
    if args.compile:
        fast = with_train(off, precision="bf16", channels_last=True)
        variants.append(("(c) torch.compile (fp32)", lambda: ALIGame(with_train(off, compile=True), device)))
        variants.append(("(c) bf16 + channels_last + compile", lambda: ALIGame(with_train(fast, compile=True),
                                                                                 device)))
    print_header(args)
    if not native_bf16 and not args.emulated_bf16:
        print("# bf16 autocast not timed: oneDNN emulates bf16 here (--emulated-bf16 times it)")
    games = []
    for _, make in variants:
        torch.manual_seed(0)
        games.append(make())
    checks = [conv_autotune.StepCheck(game.cfg.train.conv_path) for game in games]  # the naive game: onednn
    times = time_interleaved(games, checks, x, args.warmup, args.steps)
    flops = [step_flops(game, x) for game in games]
    how, fp32_peak, bf16_peak = peaks()
    print(f"# peak: {how}")
    if flops[1] and fp32_peak:
        floors = f"fp32 floor {flops[1] / fp32_peak:.3f} s"
        floors += f", bf16 floor {flops[1] / bf16_peak:.3f} s" if bf16_peak else ""
        print(f"# one alitool step: {flops[1] / 1e9:.1f} GFLOP of convolutions and matrix products (forward + "
              f"backward; the naive step: {flops[0] / 1e9:.1f}); {floors} (FLOPs / peak)")
    print("| step | wall s/step | CPU s/step | naive / step (wall) | naive / step (CPU) | vs every switch off (CPU) "
          "| fp32 peak used (wall) |")
    print("|---|---|---|---|---|---|---|")
    (naive_wall, naive_cpu), plain_cpu = times[0], times[4][1]
    for (label, _), (wall, cpu), count in zip(variants, times, flops, strict=True):
        used = f"{100 * count / (wall * fp32_peak):.0f}%" if count and fp32_peak else "-"
        print(f"| {label} | {wall:.3f} | {cpu:.3f} | {naive_wall / wall:.2f}x | {naive_cpu / cpu:.2f}x | "
              f"{plain_cpu / cpu:.2f}x | {used} |")
    print(f"\n{conv_autotune.describe('auto')}")
    for (label, _), check in zip(variants, checks, strict=True):
        line = check.report()
        if line:
            print(f"{label}: {line}")
    print("\n| Adam step, all parameters | ms |\n|---|---|")
    for label, ms in time_optimizers(off, steps=10):
        print(f"| {label} | {ms:.1f} |")


if __name__ == "__main__":
    main()
