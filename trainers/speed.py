"""Speed switches for the training step: bf16 autocast, channels_last, torch.compile, the convolution path.

Each is a config switch (``train.precision``, ``train.channels_last``, ``train.compile``, ``train.conv_path``)
measured by benchmarks/train_step.py before it is made a default anywhere.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

from alitool import conv_autotune
from alitool.config import Config
from alitool.cpu_features import onednn_runs_bf16_natively


def cpu_has_native_bf16() -> bool:
    """AVX-512 BF16 or AMX-BF16 on this CPU (Linux reports them in /proc/cpuinfo, read once by
    alitool.cpu_features), and oneDNN not held below them by ONEDNN_MAX_CPU_ISA. Without them oneDNN emulates
    bf16 arithmetic, which is slower than fp32; elsewhere (macOS, Windows, ARM) we do not guess."""
    return onednn_runs_bf16_natively()


def use_bf16(precision: str, device: torch.device, images: bool = True) -> bool:
    """Whether to run the forward pass under bf16 autocast.

    ``auto`` picks bf16 where it was measured to pay off without hurting training (benchmarks/RESULTS.md): CUDA
    GPUs with native bf16, and conv nets on CPUs with native bf16 (with channels_last, SVHN steps and
    Fashion-MNIST epochs were markedly faster, and digits and Fashion-MNIST trained to the same quality). Vector
    data (the 2-D mixture) stays fp32: bf16's 8-bit mantissa is 0.03 at a coordinate of 4, as wide as the
    mixture's modes (std 0.05).
    """
    if precision == "bf16":
        return True
    if precision == "auto":
        if device.type == "cuda":
            return torch.cuda.is_bf16_supported()
        return device.type == "cpu" and images and cpu_has_native_bf16()
    return False  # fp32: the only other value train.precision admits (checked when the config loads)


def bf16_for(cfg: Config, device: torch.device) -> bool:
    """``use_bf16`` for a config: its train.precision, and whether its data are images (image_size > 0)."""
    return use_bf16(cfg.train.precision, device, images=cfg.data.image_size > 0)


@contextlib.contextmanager
def autocast(cfg: Config, device: torch.device) -> Iterator[None]:
    """The training forward pass's context: bf16 autocast when ``bf16_for`` says so (losses and optimizer state
    stay fp32), and the convolution path of ``train.conv_path`` for the layers of alitool/layers.py."""
    precision = torch.autocast(device.type, dtype=torch.bfloat16) if bf16_for(cfg, device) \
        else contextlib.nullcontext()
    with precision, conv_autotune.conv_path(cfg.train.conv_path):
        yield


def describe_precision(cfg: Config, device: torch.device) -> str:
    """What the forward pass will run in, and why, for the run's first log line. Which way each convolution
    takes is known only once the layers have run: ``conv_autotune.describe(cfg.train.conv_path)`` says it."""
    t = cfg.train
    mode = "bf16 autocast" if bf16_for(cfg, device) else "fp32"
    layout = ", channels_last" if t.channels_last else ""
    return f"{mode}{layout} (train.precision {t.precision}, train.conv_path {t.conv_path})"


def adam(params: list[nn.Parameter], cfg: Config) -> torch.optim.Adam:
    """Adam with the config's lr and betas; the fused kernel (one pass over each tensor, instead of about ten
    ``_foreach`` passes) where torch has it: several times faster a step on SVHN's 10.4 M parameters on the CPU
    (benchmarks/RESULTS.md), and the update is the same arithmetic (tests/test_speed.py)."""
    t = cfg.train
    fused = all(p.device.type in ("cpu", "cuda") for p in params)
    return torch.optim.Adam(params, lr=t.lr, betas=(t.beta1, t.beta2), fused=fused or None)


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
