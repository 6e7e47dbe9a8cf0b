"""Convolutions as one matrix product each (im2col + GEMM) on the CPU, and the fixed rule that once decided where.

oneDNN's bf16 convolution kernels block over the output's width, and a map of 4x4 or 5x5 leaves them mostly idle.
Forward + backward, batch 200, bf16, 2-core AMX CPU, one run of ``python benchmarks/conv_shapes.py``
(benchmarks/RESULTS.md):

- SVHN's D(x) / encoder layer [128,10,10] -> [256,4,4] (4x4 kernel, stride 2): 83 ms in oneDNN, 35 ms as products;
  its transposed twin in the decoder 88 -> 32 ms; Fashion-MNIST's 5x5 maps 1.35x and 2.7x;
- CelebA's 7x7 kernels on 13x13 -> 4x4: 772 -> 242 ms, and 2591 -> 360 ms transposed;
- the products lose on 10x10 maps (0.5x), gain 1.2x at 6x6 and 1.1x at 8x8, and lose with 32 channels on a
  side (the digits model). ``pays_off`` asks for a map of at most 6x6 and at least 64 channels on both sides.
- In fp32 they gain 1.1-1.6x on the SVHN and CelebA layers above (2.8x on CelebA's decoder) and lose on
  Fashion-MNIST's conv and at 6x6; fp32 is what CPUs without native bf16 run, and this was measured on one AMX
  machine only, so the fixed rule leaves fp32 to oneDNN.

Because those figures hold for one machine, the training step no longer relies on the rule by default:
alitool/conv_autotune.py times the products against oneDNN for each layer shape on the running machine, fp32
included (``train.conv_path: auto``). ``pays_off`` is what ``train.conv_path: rule`` and every pass outside a
training step (sampling, encoding, export, torch.compile's graphs) still follow. ``applies`` says where the
products can run at all: plain convolutions (no padding, dilation or groups; the layers check) on the CPU in
fp32, bf16 (autocast's too) or float64.

Everything works in NHWC order, which is channels_last's memory order: the patches of an input are a strided
view of its memory, and a channels_last weight [O, C, kh, kw] is stored as the [O, kh*kw*C] matrix the product
needs, so only the patch matrix is ever copied. An NCHW input is copied to NHWC first and its output copied back,
so that an NCHW model keeps its memory order; that copy is part of what the autotuner times.
"""

from __future__ import annotations

import torch
from torch import Tensor

# Largest map (output of a convolution, input of a transposed one) run as a product: 6x6 measured 1.2x in bf16.
MAX_GEMM_POSITIONS = 36
# Fewest channels on either side: [32,6,6] -> [64,4,4] tied, [64,6,6] -> [32,8,8] transposed lost (0.7x).
MIN_GEMM_CHANNELS = 64


def pays_off(x: Tensor, weight: Tensor, small_side: tuple[int, int]) -> bool:
    """The fixed rule (``train.conv_path: rule``, and outside a training step): true for a bf16 (or bf16-autocast)
    channels_last convolution on the CPU whose small map is at most 6x6 and that has at least 64 channels in and
    out."""
    bf16 = x.dtype == torch.bfloat16 or (
        torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16)
    return (
        bf16
        and x.device.type == "cpu"
        and small_side[0] * small_side[1] <= MAX_GEMM_POSITIONS
        and min(weight.shape[0], weight.shape[1]) >= MIN_GEMM_CHANNELS
        and x.is_contiguous(memory_format=torch.channels_last)
        and weight.is_contiguous(memory_format=torch.channels_last)
    )


def output_side(side: tuple[int, ...], kernel: tuple[int, ...], stride: tuple[int, ...]) -> tuple[int, int]:
    """(OH, OW) of an unpadded convolution of a (H, W) map."""
    (h, w), (kh, kw), (sh, sw) = side, kernel, stride
    return (h - kh) // sh + 1, (w - kw) // sw + 1


def _patches(x: Tensor, kernel: tuple[int, int], stride: tuple[int, int]) -> Tensor:
    """im2col: [N*OH*OW, kh*kw*C] rows, one per output position, in (kh, kw, C) order (one copy)."""
    n, c, h, w = x.shape
    (kh, kw), (sh, sw) = kernel, stride
    oh, ow = output_side((h, w), kernel, stride)
    nhwc = x.permute(0, 2, 3, 1)
    s_n, s_h, s_w, s_c = nhwc.stride()
    view = nhwc.as_strided((n, oh, ow, kh, kw, c), (s_n, sh * s_h, sw * s_w, s_h, s_w, s_c))
    return view.reshape(n * oh * ow, kh * kw * c)


def _fold(rows: Tensor, shape: tuple[int, int, int, int], kernel: tuple[int, int],
          stride: tuple[int, int]) -> Tensor:
    """col2im, the adjoint of ``_patches``: adds each row's kh*kw*C values back onto the [N, C, H, W] map they
    came from. Overlapping patches are summed in (at least) fp32 and rounded once, as oneDNN accumulates."""
    n, c, h, w = shape
    (kh, kw), (sh, sw) = kernel, stride
    oh, ow = output_side((h, w), kernel, stride)
    taps = rows.view(n, oh, ow, kh, kw, c)
    out = torch.zeros(n, h, w, c, dtype=torch.promote_types(rows.dtype, torch.float32), device=rows.device)
    for i in range(kh):
        for j in range(kw):
            # add_ on the slice itself: `out[...] += t` would also write the sum back with a copy
            out[:, i:i + sh * (oh - 1) + 1:sh, j:j + sw * (ow - 1) + 1:sw, :].add_(taps[:, :, :, i, j, :])
    return out.to(rows.dtype).permute(0, 3, 1, 2)


def _matrix(weight: Tensor) -> Tensor:
    """A channels_last weight [A, B, kh, kw] as the [A, kh*kw*B] matrix it is stored as (a view)."""
    return weight.permute(0, 2, 3, 1).reshape(weight.shape[0], -1)


def _rows(t: Tensor) -> Tensor:
    """[N, C, H, W] (channels_last) as its [N*H*W, C] rows (a view)."""
    return t.permute(0, 2, 3, 1).reshape(-1, t.shape[1])


def _from_rows(rows: Tensor, n: int, h: int, w: int) -> Tensor:
    """[N*H*W, C] rows as an [N, C, H, W] channels_last map (a view)."""
    return rows.view(n, h, w, -1).permute(0, 3, 1, 2)


class _Patches(torch.autograd.Function):
    """im2col as an autograd node whose backward is col2im. The products around it are plain ``mm`` nodes, so
    autograd skips the weight gradient in a backward pass restricted to other parameters (the ALI step's
    G pass, trainers/ali.py), which a single custom node for the whole convolution could not know."""

    @staticmethod
    def forward(ctx, x: Tensor, kernel: tuple[int, int], stride: tuple[int, int]) -> Tensor:
        ctx.shape, ctx.kernel, ctx.stride = tuple(x.shape), kernel, stride
        return _patches(x, kernel, stride)

    @staticmethod
    def backward(ctx, grad: Tensor):
        return _fold(grad.contiguous(), ctx.shape, ctx.kernel, ctx.stride), None, None


class _Fold(torch.autograd.Function):
    """col2im as an autograd node whose backward is im2col: the adjoint of ``_Patches``."""

    @staticmethod
    def forward(ctx, rows: Tensor, shape: tuple[int, int, int, int], kernel: tuple[int, int],
                stride: tuple[int, int]) -> Tensor:
        ctx.kernel, ctx.stride = kernel, stride
        return _fold(rows, shape, kernel, stride)

    @staticmethod
    def backward(ctx, grad: Tensor):
        return _patches(grad.contiguous(memory_format=torch.channels_last), ctx.kernel, ctx.stride), None, None, None


def _autocast_casts(x: Tensor) -> bool:
    return torch.is_autocast_enabled("cpu") and x.dtype in (torch.float32, torch.bfloat16, torch.float16)


def compute_dtype(x: Tensor) -> torch.dtype:
    """The dtype ``F.conv2d(x, ...)`` computes in here: CPU autocast's (bf16) for a float input under autocast,
    else x's own."""
    return torch.get_autocast_dtype("cpu") if _autocast_casts(x) else x.dtype


def stored_channels_last(t: Tensor) -> bool:
    """Whether a 4-D tensor is stored in NHWC order. One channel (or a 1x1 map) makes a tensor contiguous in both
    orders; its strides still tell which order it was made in, as torch's own convolutions read them."""
    if not t.is_contiguous(memory_format=torch.channels_last):
        return False
    return not t.is_contiguous() or t.stride(1) <= t.stride(3)


def applies(x: Tensor, weight: Tensor) -> bool:
    """Whether the products can stand in for a plain (no padding, dilation or groups; the caller checks) CPU
    convolution of ``x`` and ``weight``: in any memory order, in fp32, bf16 (autocast's too) or float64."""
    dtype = compute_dtype(x)
    return (x.device.type == "cpu" and x.dim() == 4 and weight.device.type == "cpu"
            and dtype in (torch.float32, torch.bfloat16, torch.float64)
            and (_autocast_casts(x) or weight.dtype == x.dtype))  # without autocast torch refuses mixed dtypes


def _operands(x: Tensor, weight: Tensor) -> tuple[Tensor, Tensor]:
    """Cast as autocast would (the casts stay on the tape, so an fp32 weight gets an fp32 gradient), in NHWC."""
    dtype = compute_dtype(x)
    return (x.to(dtype).contiguous(memory_format=torch.channels_last),
            weight.to(dtype).contiguous(memory_format=torch.channels_last))


def _add_bias(out: Tensor, bias: Tensor | None) -> Tensor:
    return out if bias is None else out + bias.to(out.dtype)[:, None, None]


def _in_order_of(out: Tensor, x: Tensor) -> Tensor:
    """The products' NHWC output in x's memory order: an NCHW model gets NCHW maps back, as from F.conv2d."""
    return out if stored_channels_last(x) else out.contiguous()


def conv2d_products(x: Tensor, weight: Tensor, stride: tuple[int, int]) -> Tensor:
    """``F.conv2d(x, weight, stride=stride)`` without padding, dilation or groups, as patches @ weight^T, in the
    operands' own dtype (both channels_last)."""
    kernel, (n, _, h, w) = tuple(weight.shape[-2:]), x.shape
    rows = _Patches.apply(x, kernel, stride) @ _matrix(weight).t()
    return _from_rows(rows, n, *output_side((h, w), kernel, stride))


def conv_transpose2d_products(x: Tensor, weight: Tensor, stride: tuple[int, int]) -> Tensor:
    """``F.conv_transpose2d(x, weight [C_in, C_out, kh, kw], stride=stride)`` without padding or output padding:
    the adjoint of ``conv2d_products``, so rows @ weight folded back onto the larger map; operands' own dtype."""
    (kh, kw), (n, _, h, w) = weight.shape[-2:], x.shape
    out_shape = (n, weight.shape[1], (h - 1) * stride[0] + kh, (w - 1) * stride[1] + kw)
    return _Fold.apply(_rows(x) @ _matrix(weight), out_shape, (kh, kw), stride)


def conv2d(x: Tensor, weight: Tensor, bias: Tensor | None, stride: tuple[int, int]) -> Tensor:
    """``conv2d_products`` in ``compute_dtype``, plus the bias, in x's memory order: what ``TableConv2d`` runs on
    the products path."""
    operand, weight = _operands(x, weight)
    with torch.autocast("cpu", enabled=False):
        return _in_order_of(_add_bias(conv2d_products(operand, weight, stride), bias), x)


def conv_transpose2d(x: Tensor, weight: Tensor, bias: Tensor | None, stride: tuple[int, int]) -> Tensor:
    """``conv_transpose2d_products`` in ``compute_dtype``, plus the bias, in x's memory order: what
    ``TableConvTranspose2d`` runs on the products path."""
    operand, weight = _operands(x, weight)
    with torch.autocast("cpu", enabled=False):
        return _in_order_of(_add_bias(conv_transpose2d_products(operand, weight, stride), bias), x)
