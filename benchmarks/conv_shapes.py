"""Forward + backward time of the table models' convolutions: oneDNN (``F.conv2d`` / ``F.conv_transpose2d``) against
the im2col products of alitool/conv_gemm.py, in one run, bf16 and fp32, channels_last.

This is the measurement behind ``conv_gemm.pays_off``: the products are used for bf16 maps of at most 6x6
(output of a convolution, input of a transposed one) with at least 64 channels on both sides.

    python benchmarks/conv_shapes.py [--batch 200] [--steps 6]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch
import torch.nn.functional as F

from alitool import conv_gemm

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


def products(op: str, x: torch.Tensor, w: torch.Tensor, stride: int) -> torch.Tensor:
    """conv_gemm's products in x's own dtype (its conv2d / conv_transpose2d always cast to bf16)."""
    if op == "conv":
        return conv_gemm.conv2d_products(x, w, (stride, stride))
    return conv_gemm.conv_transpose2d_products(x, w, (stride, stride))


def onednn(op: str, x: torch.Tensor, w: torch.Tensor, stride: int) -> torch.Tensor:
    return F.conv2d(x, w, stride=stride) if op == "conv" else F.conv_transpose2d(x, w, stride=stride)


def forward_backward(conv, op: str, x: torch.Tensor, w: torch.Tensor, stride: int, grad: torch.Tensor):
    return lambda: torch.autograd.grad(conv(op, x, w, stride), (x, w), grad)


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
    args = parser.parse_args()
    print(f"# batch {args.batch}, {torch.get_num_threads()} threads, torch {torch.__version__}, channels_last, "
          f"load {os.getloadavg()[0]:.2f}; ms per forward + backward (input and weight gradients), median")
    print("| layer | op | input | kernel/stride | dtype | oneDNN ms | products ms | products speed-up | used |")
    print("|---|---|---|---|---|---:|---:|---:|---|")
    for where, op, cin, side, cout, kernel, stride in SHAPES:
        for dtype in (torch.bfloat16, torch.float32):
            torch.manual_seed(0)
            x = torch.randn(args.batch, cin, side, side, dtype=dtype).contiguous(memory_format=torch.channels_last)
            shape = (cout, cin, kernel, kernel) if op == "conv" else (cin, cout, kernel, kernel)
            w = (0.05 * torch.randn(shape, dtype=dtype)).contiguous(memory_format=torch.channels_last)
            x.requires_grad_(), w.requires_grad_()
            grad = torch.randn_like(onednn(op, x, w, stride))
            times = [median_ms(forward_backward(f, op, x, w, stride, grad), args.warmup, args.steps)
                     for f in (onednn, products)]
            small = (side, side) if op == "deconv" else tuple(grad.shape[-2:])
            used = conv_gemm.pays_off(x, w, small)
            print(f"| {where} | {op} | {cin}x{side}x{side} | {kernel}/{stride} | {str(dtype)[6:]} | "
                  f"{times[0]:.1f} | {times[1]:.1f} | {times[0] / times[1]:.2f}x | {'yes' if used else 'no'} |",
                  flush=True)


if __name__ == "__main__":
    main()
