"""Drop-in replacements for three torch layers: faster on the CPU, same parameters and state dict, same results.

Measured on the 2-core dev machine (torch 2.13, oneDNN), batch 200, forward + backward (benchmarks/RESULTS.md):

- A convolution whose kernel covers its whole input (the paper's tables end every D(x) and encoder stack with one,
  and D(z), D(x, z) are 1x1 convolutions on 1x1 maps) is a matrix product. oneDNN runs it as a convolution at a
  fraction of GEMM speed: 1024->1024 1x1 took 37 ms as a conv and 11 ms as ``F.linear``; in bf16 it was 104 ms
  against 6 ms, which is what kept bf16 autocast from paying off.
- The first transposed convolution of every decoder maps z (1x1) to a k x k map: also a matrix product.
- ``nn.Dropout`` draws one Bernoulli number per element from the CPU generator (88 ms for 200x32x28x28). Drawing
  64 random bits at a time and cutting them into 16-bit uniforms costs a third of that.

Each layer falls back to the stock torch operator whenever its shortcut does not apply.
"""

from __future__ import annotations

import sys

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def _covers_input(module: nn.Conv2d | nn.ConvTranspose2d, x: Tensor, side: tuple[int, int]) -> bool:
    """True when the layer has no padding, dilation or groups and the input's spatial size is ``side``."""
    return (
        x.dim() == 4
        and tuple(x.shape[-2:]) == side
        and module.groups == 1
        and not isinstance(module.padding, str)  # "same" / "valid": leave them to torch
        and all(p == 0 for p in module.padding)
        and all(d == 1 for d in module.dilation)
    )


class TableConv2d(nn.Conv2d):
    """``nn.Conv2d`` that runs as ``F.linear`` when the kernel covers the whole input (output 1x1)."""

    def forward(self, x: Tensor) -> Tensor:
        if not _covers_input(self, x, self.kernel_size):
            return super().forward(x)
        out = F.linear(x.flatten(1), self.weight.flatten(1), self.bias)
        return out[:, :, None, None]


class TableConvTranspose2d(nn.ConvTranspose2d):
    """``nn.ConvTranspose2d`` that runs as a matrix product on a 1x1 input (output kernel x kernel, any stride)."""

    def forward(self, x: Tensor, output_size: list[int] | None = None) -> Tensor:
        if output_size is not None or any(p != 0 for p in self.output_padding) or not _covers_input(self, x, (1, 1)):
            return super().forward(x, output_size)
        # out[n, o, i, j] = sum_c x[n, c] * W[c, o, i, j] + b[o]
        out = x.flatten(1) @ self.weight.flatten(1)
        out = out.view(x.shape[0], self.out_channels, *self.kernel_size)
        return out if self.bias is None else out + self.bias[:, None, None]


class TableDropout(nn.Dropout):
    """Inverted dropout whose mask comes from 15-bit uniforms cut out of 64-bit random draws.

    ``random_`` on int64 fills 63 random bits (the sign bit stays 0), so each of the four 16-bit pieces of a draw
    has 15 uniform low bits. The drop probability is rounded to a multiple of 1/32768 (0.2 becomes 0.20001),
    far below anything a model can tell.
    """

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.p == 0:
            return x
        if self.p >= 1 or x.device.type != "cpu" or sys.byteorder != "little":
            return super().forward(x)  # CUDA's Bernoulli sampler is fast; the bit layout assumes little-endian
        n = x.numel()
        words = torch.empty((n + 3) // 4, dtype=torch.int64, device=x.device).random_()
        uniform15 = words.view(torch.int16)[:n]
        # The draws are i.i.d., so they may take any layout: x's own (channels_last included) keeps the
        # multiply below a plain elementwise loop instead of a strided copy.
        dense = x.is_contiguous() or x.is_contiguous(memory_format=torch.channels_last)
        uniform15 = (uniform15.as_strided(x.shape, x.stride()) if dense else uniform15.view(x.shape)) & 0x7FFF
        dropped = round(self.p * 32768)  # P(uniform15 < dropped) = dropped / 32768 ~= p
        mask = (uniform15 >= dropped).to(x.dtype).mul_(32768 / (32768 - dropped))
        return x * mask
