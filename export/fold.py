"""Batch norm folded into the layer before it, for the exported inference graphs.

In eval mode a table row's batch norm is an affine map per channel, y = (x - mean) * s + beta with
s = gamma / sqrt(var + eps), so it can be merged into the convolution, transposed convolution or linear layer
that feeds it (paper tables: every BN row has such a layer and no bias, official code). ONNX Runtime's own
optimiser merges BN only into Conv; behind a ConvTranspose, or a MatMul (alitool's full-input convolutions run as
matrix products, alitool/layers.py), it stayed a separate node, and the INT8 quantiser then warned that it could
not quantise its weight per channel. Folded here, every exported graph is free of BatchNormalization nodes. The
export's parity check compares the folded graph with the original networks, so a wrong fold cannot be written.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

# The layer kinds a row may hold before its batch norm, and the weight dimension of their output channels.
_OUTPUT_DIM = {nn.Conv2d: 0, nn.Linear: 0, nn.ConvTranspose2d: 1}


def _output_dim(layer: nn.Module) -> int | None:
    for kind, dim in _OUTPUT_DIM.items():
        if isinstance(layer, kind):
            return dim
    return None


def fold_batch_norm(network: nn.Module) -> nn.Module:
    """An eval-mode copy of ``network`` in which each (layer, batch norm) pair of a table row (``layer`` being the
    row's conv / deconv / linear part right before its ``bn``) becomes one layer with a bias; ``network`` itself
    is not touched. Rows whose batch norm keeps no running statistics are left as they are."""
    folded = copy.deepcopy(network).eval()
    for row in folded.modules():
        names = list(row._modules)
        if "bn" not in names or names.index("bn") == 0:
            continue
        bn, layer = row.bn, row._modules[names[names.index("bn") - 1]]
        dim = _output_dim(layer)
        if dim is None or bn.running_mean is None or bn.running_var is None:
            continue
        _merge(layer, bn, dim)
        row._modules["bn"] = nn.Identity()
    return folded


@torch.no_grad()
def _merge(layer: nn.Module, bn: nn.modules.batchnorm._BatchNorm, dim: int) -> None:
    scale = torch.rsqrt(bn.running_var + bn.eps)
    if bn.weight is not None:
        scale = scale * bn.weight
    shape = [1] * layer.weight.dim()
    shape[dim] = -1
    layer.weight.mul_(scale.view(shape))
    bias = torch.zeros_like(bn.running_mean) if layer.bias is None else layer.bias.detach()
    bias = (bias - bn.running_mean) * scale
    if bn.bias is not None:
        bias = bias + bn.bias
    layer.bias = nn.Parameter(bias.to(layer.weight.dtype), requires_grad=False)
