"""Forward + backward time of maxout (the max over ``pieces`` consecutive channels) two ways, in one run:
``amax(dim)`` and ``max(dim).values``, on the shapes of the paper's maxout discriminators, and then one whole ALI
training step of those configs with each.

The two give the same forward values. Their gradients differ only where pieces tie exactly: ``amax`` splits
the gradient evenly between the tied pieces, ``max`` sends it all to one of them. This is the measurement behind
alitool/models.py's ``Maxout`` using ``max``; the step table times the model with each, the "alitool" column
with ``Maxout`` as it is.

    python benchmarks/maxout.py [--rounds 30] [--step-rounds 20] [--threads 1]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

from alitool import cpu_features
from alitool.config import load_config, with_train
from alitool.models import Maxout, data_shape
from alitool.trainers.ali import ALIGame
from alitool.trainers.speed import describe_precision

# (where it comes from, input shape before maxout [batch, channels, *spatial], pieces); batch 200: D scores
# both halves of a batch of 100 in one pass.
SHAPES = [
    ("mixture25_paper D(x, z), linear", (200, 1000), 5),
    ("cifar10 D(x) row 1", (200, 32, 28, 28), 2),
    ("cifar10 D(x) row 2", (200, 64, 13, 13), 2),
    ("cifar10 D(x) row 3", (200, 128, 10, 10), 2),
    ("cifar10 D(x) row 4", (200, 256, 4, 4), 2),
    ("cifar10 D(x) row 5", (200, 512, 1, 1), 2),
    ("cifar10 D(z), 1x1 conv", (200, 512, 1, 1), 2),
    ("cifar10 D(x, z), 1x1 conv", (200, 1024, 1, 1), 2),
]

WAYS = {
    "amax": lambda x, pieces: x.unflatten(1, (-1, pieces)).amax(dim=2),
    "max": lambda x, pieces: x.unflatten(1, (-1, pieces)).max(dim=2).values,
}


def interleaved_ms(runs: dict, rounds: int, warmup: int = 3) -> dict[str, float]:
    """Median ms per call of each run; the runs take turns, one call each per round, so that a slow spell of a
    shared machine lands on all of them alike."""
    for run in runs.values():
        for _ in range(warmup):
            run()
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(rounds):
        for name, run in runs.items():
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)
    return {name: 1000 * statistics.median(t) for name, t in times.items()}


def forward_backward(way, x: torch.Tensor, pieces: int, grad: torch.Tensor):
    return lambda: torch.autograd.grad(way(x, pieces), x, grad)


def with_maxout(game: ALIGame, way) -> ALIGame:
    """The game with every Maxout module of its model computing ``way`` instead of its own kernel."""
    for module in game.model.modules():
        if isinstance(module, Maxout):
            module.forward = lambda x, pieces=module.pieces: way(x, pieces)
    return game


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=30, help="timed calls of each way per shape")
    parser.add_argument("--step-rounds", type=int, default=20, help="timed training steps of each way per config")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    limits = ", ".join(f"{k}={v}" for k, v in cpu_features.isa_limits().items()) or "none"
    features = ", ".join(cpu_features.vector_features())
    print(f"# {cpu_features.cpu_model()} ({features}); ATen kernels: {torch.backends.cpu.get_cpu_capability()} "
          f"(ISA limits: {limits}); {args.threads} thread(s), torch {torch.__version__}, load "
          f"{os.getloadavg()[0]:.2f}; ms per forward + backward, median of {args.rounds}, ways interleaved")
    print("| maxout input | shape | pieces | layout | dtype | amax ms | max ms | amax / max |")
    print("|---|---|---|---|---|---:|---:|---:|")
    for where, shape, pieces in SHAPES:
        for layout in ("NCHW", "NHWC") if len(shape) == 4 else ("-",):
            for dtype in (torch.float32, torch.bfloat16):
                torch.manual_seed(0)
                x = torch.randn(shape, dtype=dtype)
                if layout == "NHWC":
                    x = x.contiguous(memory_format=torch.channels_last)
                x.requires_grad_()
                grad = torch.randn(Maxout(pieces)(x).shape, dtype=dtype)
                ms = interleaved_ms({name: forward_backward(way, x, pieces, grad) for name, way in WAYS.items()},
                                    args.rounds)
                print(f"| {where} | {'x'.join(map(str, shape))} | {pieces} | {layout} | {str(dtype)[6:]} | "
                      f"{ms['amax']:.3f} | {ms['max']:.3f} | {ms['amax'] / ms['max']:.2f} |", flush=True)

    print(f"\n# one ALI training step, ms, median of {args.step_rounds}, the two interleaved: every Maxout module "
          "of the model computing amax, against alitool's Maxout as it is (max)")
    print("| config | precision, layout | batch | amax | alitool's Maxout | amax / alitool |")
    print("|---|---|---:|---:|---:|---:|")
    # cifar10 twice: bf16 where this CPU has it natively (the config's "auto"), and fp32 as on a CPU without
    for name, precision in (("mixture25_paper", "auto"), ("cifar10", "auto"), ("cifar10", "fp32")):
        cfg = with_train(load_config(name), precision=precision)
        games = {}
        for way in ("amax", "alitool"):
            torch.manual_seed(0)
            game = ALIGame(cfg, torch.device("cpu"))
            games[way] = game if way == "alitool" else with_maxout(game, WAYS[way])
        x = torch.randn(cfg.train.batch_size, *data_shape(cfg))
        ms = interleaved_ms({way: (lambda g=g, x=x: g.step(x)) for way, g in games.items()}, args.step_rounds)
        print(f"| {name} | {describe_precision(cfg, torch.device('cpu'))} | {cfg.train.batch_size} | "
              f"{ms['amax']:.1f} | {ms['alitool']:.1f} | {ms['amax'] / ms['alitool']:.2f} |", flush=True)


if __name__ == "__main__":
    main()
