"""Forward + backward time of the table models' convolutions, each way alitool/conv_autotune.py can run them:
oneDNN (``F.conv2d`` / ``F.conv_transpose2d``), oneDNN on a copy in the other memory order, and the im2col
products of alitool/conv_gemm.py, in one run, bf16 and fp32, channels_last (or NCHW with --layout nchw).

This is the measurement behind ``conv_gemm.pays_off`` (``train.conv_path: rule``): the products are used for bf16
maps of at most 6x6 (output of a convolution, input of a transposed one) with at least 64 channels on both sides.
The "auto" column is what ``conv_autotune.pick`` would take from these timings (``train.conv_path: auto`` times
each layer shape of a run the same way, on the layer's own input).

    python benchmarks/conv_shapes.py [--batch 200] [--steps 6] [--layout channels_last|nchw]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

from alitool import conv_autotune, conv_gemm

# (where it comes from, op, in channels, side, out channels, kernel, stride)
SHAPES = [
    ("svhn D(x)/encoder", "conv", 128, 10, 256, 4, 2),
    ("svhn decoder", "deconv", 256, 4, 128, 4, 2),
    ("svhn D(x)/encoder, 10x10 out", "conv", 64, 13, 128, 4, 1),
    ("fashion D(x)/encoder", "conv", 64, 11, 128, 3, 2),
    ("fashion decoder", "deconv", 256, 5, 128, 3, 2),
    ("celeba D(x)/encoder", "conv", 256, 13, 256, 7, 2),
    ("celeba decoder", "deconv", 512, 4, 256, 7, 2),
    ("6x6 map", "conv", 128, 14, 256, 4, 2),
    ("8x8 map", "conv", 128, 18, 256, 4, 2),
    ("digits, 32 channels", "conv", 32, 6, 64, 3, 1),
    ("digits, 32 channels", "deconv", 64, 6, 32, 3, 1),
]


def forward_backward(path: str, op: str, x: torch.Tensor, w: torch.Tensor, stride: int, grad: torch.Tensor):
    return lambda: torch.autograd.grad(conv_autotune.run(path, op == "deconv", x, w, None, (stride, stride)),
                                       (x, w), grad)


def median_ms(run, warmup: int, steps: int) -> float:
    for _ in range(warmup):
        run()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=200, help="D sees both halves of a batch of 100")
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--layout", choices=("channels_last", "nchw"), default="channels_last")
    args = parser.parse_args()
    layout = torch.channels_last if args.layout == "channels_last" else torch.contiguous_format
    print(f"# batch {args.batch}, {torch.get_num_threads()} threads, torch {torch.__version__}, {args.layout}, "
          f"load {os.getloadavg()[0]:.2f}; ms per forward + backward (input and weight gradients), median")
    print("| layer | op | input | kernel/stride | dtype | oneDNN ms | other order ms | products ms | products speed-up "
          "| rule | auto |")
    print("|---|---|---|---|---|---:|---:|---:|---:|---|---|")
    for where, op, cin, side, cout, kernel, stride in SHAPES:
        for dtype in (torch.bfloat16, torch.float32):
            torch.manual_seed(0)
            x = torch.randn(args.batch, cin, side, side, dtype=dtype).contiguous(memory_format=layout)
            shape = (cout, cin, kernel, kernel) if op == "conv" else (cin, cout, kernel, kernel)
            w = (0.05 * torch.randn(shape, dtype=dtype)).contiguous(memory_format=layout)
            x.requires_grad_(), w.requires_grad_()
            grad = torch.randn_like(conv_autotune.run("onednn", op == "deconv", x, w, None, (stride, stride)))
            times = {path: median_ms(forward_backward(path, op, x, w, stride, grad), args.warmup, args.steps)
                     for path in conv_autotune.PATHS}
            small = (side, side) if op == "deconv" else tuple(grad.shape[-2:])
            rule = "products" if conv_gemm.pays_off(x, w, small) else "oneDNN"
            print(f"| {where} | {op} | {cin}x{side}x{side} | {kernel}/{stride} | {str(dtype)[6:]} | "
                  f"{times['onednn']:.1f} | {times['relayout']:.1f} | {times['products']:.1f} | "
                  f"{times['onednn'] / times['products']:.2f}x | {rule} | {conv_autotune.pick(times)} |", flush=True)


if __name__ == "__main__":
    main()
