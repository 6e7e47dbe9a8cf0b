"""Speed switches for the training step: bf16 autocast, channels_last, torch.compile (issue 9).

Each is a config switch (``train.precision``, ``train.channels_last``, ``train.compile``) measured by
benchmarks/train_step.py before it is made a default anywhere.
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn


def use_bf16(precision: str, device: torch.device) -> bool:
    if precision == "bf16":
        return True
    if precision == "auto":  # bf16 where it is a clear win: CUDA GPUs with native bf16 (Ampere and newer)
        return device.type == "cuda" and torch.cuda.is_bf16_supported()
    if precision != "fp32":
        raise ValueError(f"train.precision must be auto, fp32 or bf16, not {precision!r}")
    return False


def autocast(precision: str, device: torch.device) -> contextlib.AbstractContextManager:
    """bf16 autocast for the forward pass; losses and optimizer state stay fp32."""
    if use_bf16(precision, device):
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def prepare_module(module: nn.Module, channels_last: bool) -> nn.Module:
    if channels_last:
        module = module.to(memory_format=torch.channels_last)
    return module


def prepare_input(x: torch.Tensor, channels_last: bool) -> torch.Tensor:
    if channels_last and x.dim() == 4:
        return x.contiguous(memory_format=torch.channels_last)
    return x


def compile_modules(*modules: nn.Module) -> tuple[nn.Module, ...]:
    """torch.compile each network. The ALI step runs two backward passes through one forward graph (the first
    with retain_graph=True), which AOT autograd's donated buffers forbid, so that optimisation is turned off."""
    import torch._functorch.config as functorch_config

    functorch_config.donated_buffer = False
    return tuple(torch.compile(m) for m in modules)
