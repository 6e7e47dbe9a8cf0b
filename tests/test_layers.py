"""The fast table layers compute what the stock torch layers compute (alitool/layers.py)."""

import pytest
import torch
from torch import nn

from alitool.layers import TableConv2d, TableConvTranspose2d, TableDropout


@pytest.mark.parametrize(
    "cin, cout, kernel, stride, side",
    [(16, 24, 4, 1, 4), (8, 12, 4, 2, 4), (32, 32, 1, 1, 1), (8, 16, 3, 2, 9)],  # last: no shortcut, stock path
)
def test_conv_matches_stock_conv_forward_and_backward(cin, cout, kernel, stride, side):
    torch.manual_seed(0)
    fast, stock = TableConv2d(cin, cout, kernel, stride), nn.Conv2d(cin, cout, kernel, stride)
    stock.load_state_dict(fast.state_dict())
    x = torch.randn(5, cin, side, side)
    for memory_format in (torch.contiguous_format, torch.channels_last):
        xf = x.clone().to(memory_format=memory_format).requires_grad_()
        xs = x.clone().requires_grad_()
        yf, ys = fast(xf), stock(xs)
        assert yf.shape == ys.shape
        torch.testing.assert_close(yf, ys, atol=1e-5, rtol=1e-5)
        yf.square().sum().backward()
        ys.square().sum().backward()
        torch.testing.assert_close(xf.grad, xs.grad, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(fast.weight.grad, stock.weight.grad, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(fast.bias.grad, stock.bias.grad, atol=1e-4, rtol=1e-4)
        fast.zero_grad(), stock.zero_grad()


@pytest.mark.parametrize("stride, side, bias", [(1, 1, True), (2, 1, False), (2, 3, True)])  # side 3: stock path
def test_deconv_matches_stock_deconv(stride, side, bias):
    torch.manual_seed(0)
    fast = TableConvTranspose2d(12, 7, 4, stride, bias=bias)
    stock = nn.ConvTranspose2d(12, 7, 4, stride, bias=bias)
    stock.load_state_dict(fast.state_dict())
    x = torch.randn(3, 12, side, side, requires_grad=True)
    x2 = x.detach().clone().requires_grad_()
    yf, ys = fast(x), stock(x2)
    torch.testing.assert_close(yf, ys, atol=1e-5, rtol=1e-5)
    yf.sum().backward()
    ys.sum().backward()
    torch.testing.assert_close(x.grad, x2.grad, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(fast.weight.grad, stock.weight.grad, atol=1e-5, rtol=1e-5)


def test_dropout_keeps_one_minus_p_and_rescales():
    torch.manual_seed(0)
    drop = TableDropout(0.2).train()
    y = drop(torch.ones(400_000))
    kept = (y > 0).float().mean().item()
    assert abs(kept - 0.8) < 0.005  # binomial std at this n is 0.0006
    values = y.unique().tolist()
    assert values[0] == 0.0 and values[1] == pytest.approx(1 / (1 - 0.2), rel=1e-4) and len(values) == 2
    assert abs(y.mean().item() - 1.0) < 0.01  # inverted dropout: the expectation is unchanged


def test_dropout_just_below_one_drops_almost_everything_and_stays_finite():
    y = TableDropout(0.999995).train()(torch.ones(100_000))
    assert torch.isfinite(y).all() and (y > 0).sum() < 20


def test_dropout_masks_are_independent_across_positions_and_calls():
    torch.manual_seed(0)
    drop = TableDropout(0.5).train()
    a, b = drop(torch.ones(200_000)) > 0, drop(torch.ones(200_000)) > 0
    assert not torch.equal(a, b)
    # neighbouring elements come from the same 64-bit draw: they must still be uncorrelated
    corr = torch.corrcoef(torch.stack([a[:-1].float(), a[1:].float()]))[0, 1].item()
    assert abs(corr) < 0.01
    assert abs((a & b).float().mean().item() - 0.25) < 0.005


def test_dropout_is_identity_in_eval_and_keeps_layout_and_dtype():
    drop = TableDropout(0.3)
    x = torch.randn(4, 6, 5, 5).to(memory_format=torch.channels_last)
    assert drop.eval()(x) is x
    y = drop.train()(x)
    assert y.is_contiguous(memory_format=torch.channels_last)
    assert drop(x.bfloat16()).dtype == torch.bfloat16


def test_dropout_follows_the_torch_seed():
    drop = TableDropout(0.2).train()
    torch.manual_seed(3)
    first = drop(torch.ones(1000))
    torch.manual_seed(3)
    assert torch.equal(first, drop(torch.ones(1000)))
