"""The speed paths compute what the plain ones compute: fused Adam (trainers/speed.py) and the small-map bf16
convolutions as im2col products (alitool/conv_gemm.py, used by alitool/layers.py; outside a training step they
follow the fixed rule ``pays_off`` tested here, inside one ``train.conv_path``: tests/test_conv_autotune.py)."""

import pytest
import torch
from torch import nn

from alitool import conv_gemm
from alitool.config import load_config
from alitool.layers import TableConv2d, TableConvTranspose2d
from alitool.trainers.speed import adam

CL = torch.channels_last


def test_fused_adam_follows_the_foreach_trajectory():
    cfg = load_config("digits")
    torch.manual_seed(0)
    fused_net = nn.Sequential(nn.Linear(20, 30), nn.Tanh(), nn.Linear(30, 5))
    plain_net = nn.Sequential(nn.Linear(20, 30), nn.Tanh(), nn.Linear(30, 5))
    plain_net.load_state_dict(fused_net.state_dict())
    fused = adam(list(fused_net.parameters()), cfg)
    assert fused.defaults["fused"]
    t = cfg.train
    plain = torch.optim.Adam(plain_net.parameters(), lr=t.lr, betas=(t.beta1, t.beta2), foreach=True)
    x = torch.randn(64, 20)
    for _ in range(20):
        for net, opt in ((fused_net, fused), (plain_net, plain)):
            opt.zero_grad()
            net(x).square().mean().backward()
            opt.step()
    for a, b in zip(fused_net.parameters(), plain_net.parameters(), strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)
    assert not torch.equal(fused_net[0].weight, nn.Linear(20, 30).weight)  # it moved


def _bf16_error(got: torch.Tensor, want: torch.Tensor) -> float:
    return ((got.float() - want.float()).norm() / want.float().norm()).item()


# (layer class, in, out, kernel, stride, input side): SVHN's 4x4 maps, a 5x5 one with a 3x3 kernel, and transposed
SMALL_MAPS = [
    (TableConv2d, 128, 256, 4, 2, 10),
    (TableConv2d, 64, 128, 3, 2, 11),
    (TableConvTranspose2d, 256, 128, 4, 2, 4),
    (TableConvTranspose2d, 128, 64, 3, 1, 4),
]


@pytest.mark.parametrize("cls, cin, cout, kernel, stride, side", SMALL_MAPS)
@pytest.mark.parametrize("bias", [False, True])
def test_small_map_products_match_fp32_convolution_to_bf16_rounding(cls, cin, cout, kernel, stride, side, bias):
    torch.manual_seed(0)
    fast = cls(cin, cout, kernel, stride, bias=bias).to(memory_format=CL)
    stock = (nn.Conv2d if cls is TableConv2d else nn.ConvTranspose2d)(cin, cout, kernel, stride, bias=bias)
    stock.load_state_dict(fast.state_dict())
    x = torch.randn(6, cin, side, side).contiguous(memory_format=CL)
    x_fast, x_stock = x.clone().requires_grad_(), x.clone().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert conv_gemm.pays_off(x, fast.weight, (4, 4))
        y_fast = fast(x_fast)
    y_stock = stock(x_stock)  # fp32: the reference; bf16 rounding alone is about 3e-3 relative
    assert y_fast.dtype == torch.bfloat16 and y_fast.is_contiguous(memory_format=CL)
    assert _bf16_error(y_fast, y_stock) < 8e-3
    grad = torch.randn_like(y_stock)
    y_fast.float().backward(grad)
    y_stock.backward(grad)
    assert _bf16_error(x_fast.grad, x_stock.grad) < 8e-3
    assert fast.weight.grad.dtype == torch.float32
    assert _bf16_error(fast.weight.grad, stock.weight.grad) < 8e-3
    if bias:
        assert _bf16_error(fast.bias.grad, stock.bias.grad) < 8e-3


def _products_run(loss: torch.Tensor, inputs: list[torch.Tensor]) -> int:
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        loss.backward(inputs=inputs, retain_graph=True)
    return sum(event.name == "aten::mm" for event in prof.events())


def test_a_backward_pass_restricted_to_the_input_skips_the_weight_product():
    """The ALI step's G pass asks D for the gradient of its input only: that pass must deliver it with one
    product, and not also compute the weight's gradient only to throw it away."""
    torch.manual_seed(0)
    conv = TableConv2d(128, 256, 4, 2, bias=False).to(memory_format=CL)
    x = torch.randn(4, 128, 10, 10).contiguous(memory_format=CL).requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = conv(x).float().sum()
    assert _products_run(loss, [x]) == 1
    assert conv.weight.grad is None
    want = torch.nn.functional.grad.conv2d_input(x.shape, conv.weight, torch.ones(4, 256, 4, 4), stride=2)
    assert _bf16_error(x.grad, want) < 8e-3
    assert _products_run(loss, [x, conv.weight]) == 2


@pytest.mark.parametrize("cin, cout, kernel, stride, side", [(5, 7, 4, 2, 10), (6, 3, 3, 1, 5), (4, 4, 7, 2, 13)])
def test_products_are_the_convolution_in_float64(cin, cout, kernel, stride, side):
    """Without bf16 rounding the products are the convolution and its transpose, forward and backward."""
    torch.manual_seed(0)
    x = torch.randn(3, cin, side, side, dtype=torch.float64).contiguous(memory_format=CL).requires_grad_()
    w = torch.randn(cout, cin, kernel, kernel, dtype=torch.float64).contiguous(memory_format=CL).requires_grad_()
    s = (stride, stride)
    torch.autograd.gradcheck(lambda a, b: conv_gemm.conv2d_products(a, b, s), (x, w))
    torch.testing.assert_close(conv_gemm.conv2d_products(x, w, s), torch.nn.functional.conv2d(x, w, stride=s))
    y = torch.randn(3, cin, 4, 4, dtype=torch.float64).contiguous(memory_format=CL)
    wt = torch.randn(cin, cout, kernel, kernel, dtype=torch.float64).contiguous(memory_format=CL)
    torch.testing.assert_close(conv_gemm.conv_transpose2d_products(y, wt, s),
                               torch.nn.functional.conv_transpose2d(y, wt, stride=s))


def test_patches_and_fold_are_adjoint():
    """<patches(x), r> == <x, fold(r)> in float64: the backward of one is the forward of the other."""
    torch.manual_seed(0)
    x = torch.randn(3, 5, 9, 9, dtype=torch.float64).contiguous(memory_format=CL)
    rows = conv_gemm._patches(x, (3, 3), (2, 2))
    r = torch.randn_like(rows)
    folded = conv_gemm._fold(r, tuple(x.shape), (3, 3), (2, 2))
    torch.testing.assert_close((rows * r).sum(), (x * folded).sum())


@pytest.mark.parametrize(
    "dtype, layout, side, channels, taken",
    [
        (torch.bfloat16, CL, 4, 128, True),
        (torch.float32, CL, 4, 128, False),  # fp32: oneDNN's convolution is as fast (benchmarks/conv_shapes.py)
        (torch.bfloat16, torch.contiguous_format, 4, 128, False),  # NCHW: the rows would not be a view
        (torch.bfloat16, CL, 8, 128, False),  # 8x8 maps: the products no longer win
        (torch.bfloat16, CL, 4, 32, False),  # 32 channels: too thin a product
    ],
)
def test_products_are_used_only_where_they_were_measured_to_win(dtype, layout, side, channels, taken):
    x = torch.randn(2, channels, side, side, dtype=dtype).contiguous(memory_format=layout)
    weight = torch.randn(channels, channels, 3, 3).contiguous(memory_format=layout)
    assert conv_gemm.pays_off(x, weight, (side, side)) is taken
