"""Drop-in replacements for three torch layers: faster on the CPU, same parameters and state dict, same results.

Measured on the 2-core dev machine (torch 2.13, oneDNN), batch 200, forward + backward (benchmarks/RESULTS.md):

- A convolution whose kernel covers its whole input (the paper's tables end every D(x) and encoder stack with one,
  and D(z), D(x, z) are 1x1 convolutions on 1x1 maps) is a matrix product. oneDNN runs it as a convolution at a
  fraction of GEMM speed: 1024->1024 1x1 took 37 ms as a conv and 11 ms as ``F.linear``; in bf16 it was 104 ms
  against 6 ms, which is what kept bf16 autocast from paying off.
- The first transposed convolution of every decoder maps z (1x1) to a k x k map: also a matrix product.
- ``nn.Dropout`` draws one Bernoulli number per element from the CPU generator (88 ms for 200x32x28x28). Drawing
  64 random bits at a time and cutting them into 16-bit uniforms costs a third of that.
- A bf16 convolution with a small output map (4x4 in SVHN's D(x) and encoder) runs 2.4x faster as one im2col
  matrix product (alitool/conv_gemm.py); so does its transposed twin in the decoder (2.7x; CelebA's 3.2x and 7.2x).

Any other plain convolution (no padding, dilation or groups) runs the way ``alitool.conv_autotune.path_for``
says: in a training step, the way ``train.conv_path`` asks for (by default the fastest on this machine, timed once
per layer shape and kept on disk: oneDNN, oneDNN on a copy in the other memory order, or the im2col products);
elsewhere (sampling, encoding, export) by the fixed rule ``conv_gemm.pays_off`` (bf16, channels_last, small map).
Each layer falls back to the stock torch operator whenever its shortcut does not apply.
"""

from __future__ import annotations

import sys

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from alitool import conv_autotune


def _plain(module: nn.Conv2d | nn.ConvTranspose2d, x: Tensor) -> bool:
    """True when the layer has no padding, dilation or groups (every layer of the paper's tables)."""
    return (
        x.dim() == 4
        and module.groups == 1
        and not isinstance(module.padding, str)  # "same" / "valid": leave them to torch
        and all(p == 0 for p in module.padding)
        and all(d == 1 for d in module.dilation)
    )


def _nhwc_order(weight: Tensor) -> tuple[int, ...]:
    """The dimension order in which a weight is stored: (0, 2, 3, 1) for channels_last. Flattening the weight and
    the input in that order is then a view of the weight, where plain ``flatten(1)`` would copy it every step."""
    if weight.is_contiguous():  # also true of a 1x1 kernel in channels_last, which either order views
        return (0, 1, 2, 3)
    return (0, 2, 3, 1) if weight.is_contiguous(memory_format=torch.channels_last) else (0, 1, 2, 3)


class TableConv2d(nn.Conv2d):
    """``nn.Conv2d`` that runs as ``F.linear`` when the kernel covers the whole input (output 1x1), and otherwise
    the way ``conv_autotune.path_for`` picks (oneDNN, oneDNN in the other memory order, or one im2col product)."""

    def forward(self, x: Tensor) -> Tensor:
        if not _plain(self, x):
            return super().forward(x)
        if tuple(x.shape[-2:]) == self.kernel_size:
            weight = self.weight
            if _nhwc_order(weight) != (0, 1, 2, 3):  # (an identity permute would still be a node in ONNX)
                x, weight = x.permute(0, 2, 3, 1), weight.permute(0, 2, 3, 1)
            out = F.linear(x.flatten(1), weight.flatten(1), self.bias)
            return out[:, :, None, None]
        path = conv_autotune.path_for(False, x, self.weight, self.bias, self.stride)
        if path == "onednn":
            return super().forward(x)
        return conv_autotune.run(path, False, x, self.weight, self.bias, self.stride)


class TableConvTranspose2d(nn.ConvTranspose2d):
    """``nn.ConvTranspose2d`` that runs as a matrix product on a 1x1 input (output kernel x kernel, any stride),
    and otherwise the way ``conv_autotune.path_for`` picks (oneDNN, oneDNN in the other memory order, or one
    product + col2im)."""

    def forward(self, x: Tensor, output_size: list[int] | None = None) -> Tensor:
        if output_size is not None or any(p != 0 for p in self.output_padding) or not _plain(self, x):
            return super().forward(x, output_size)
        if tuple(x.shape[-2:]) == (1, 1):
            # out[n, o, i, j] = sum_c x[n, c] * W[c, o, i, j] + b[o], in the weight's stored order
            n, (kh, kw) = x.shape[0], self.kernel_size
            if _nhwc_order(self.weight) == (0, 1, 2, 3):
                out = (x.flatten(1) @ self.weight.flatten(1)).view(n, self.out_channels, kh, kw)
            else:
                out = x.flatten(1) @ self.weight.permute(0, 2, 3, 1).flatten(1)
                out = out.view(n, kh, kw, self.out_channels).permute(0, 3, 1, 2)
            return out if self.bias is None else out + self.bias[:, None, None]
        path = conv_autotune.path_for(True, x, self.weight, self.bias, self.stride)
        if path == "onednn":
            return super().forward(x, output_size)
        return conv_autotune.run(path, True, x, self.weight, self.bias, self.stride)


class TableDropout(nn.Dropout):
    """Inverted dropout whose mask comes from 16-bit uniforms cut out of 64-bit random draws.

    ``random_(-2**63, None)`` on int64 fills all 64 bits, so each of the four 16-bit pieces of a draw is uniform
    over [-32768, 32767]. An element is kept when its piece is at least ``dropped - 32768``; the drop probability
    is rounded to a multiple of 1/65536 (0.2 becomes 0.19999), far below anything a model can tell.
    """

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.p == 0:
            return x
        if self.p >= 1 or x.device.type != "cpu" or sys.byteorder != "little":
            return super().forward(x)  # CUDA's Bernoulli sampler is fast; the bit layout assumes little-endian
        n = x.numel()
        words = torch.empty((n + 3) // 4, dtype=torch.int64, device=x.device).random_(-(2**63), None)
        uniform16 = words.view(torch.int16)[:n]
        # The draws are i.i.d., so they may take any layout: x's own (channels_last included) keeps the
        # multiply below a plain elementwise loop instead of a strided copy.
        dense = x.is_contiguous() or x.is_contiguous(memory_format=torch.channels_last)
        uniform16 = uniform16.as_strided(x.shape, x.stride()) if dense else uniform16.view(x.shape)
        # P(uniform16 < dropped - 32768) = dropped / 65536 ~= p; at most 65535 so that the rescale stays finite
        dropped = min(round(self.p * 65536), 65535)
        mask = (uniform16 >= dropped - 32768).to(x.dtype).mul_(65536 / (65536 - dropped))
        return x * mask
