"""The torch side of the CPU thread policy (alitool/threads.py decides): how much arithmetic one training step is,
and applying the choice with ``torch.set_num_threads``.

The step's size is counted, not guessed from the parameter count: a convolution reuses each weight at every output
position, so parameters x batch x 6 undercounts the 8x8 digits model 6x and CelebA's 100x. torch's FLOP counter
runs a second copy of the networks on one example on the meta device, where tensors have shapes but no memory:
nothing is computed, no random number is drawn, and the training networks are not touched. It costs some 0.03 s
once the training networks exist (their optimizers have loaded what meta tensors need; in a fresh process the
first meta operation costs some 2 s of imports on a 2-core machine).
"""

from __future__ import annotations

import os

import torch
from torch.utils.flop_counter import FlopCounterMode

from alitool.config import Config
from alitool.models import ALI, data_shape
from alitool.threads import ThreadChoice, choose_threads, threads_from_environment, threads_phrase
from alitool.trainers.distributed import DistInfo, launched_by_torchrun

# Backward passes cost about twice the forward pass (a gradient for the inputs and one for the weights).
FORWARD_AND_BACKWARD = 3


def forward_flops(cfg: Config) -> dict[str, float]:
    """FLOPs of one example through each network of ``cfg``'s ALI model, as torch's FLOP counter counts them (the
    matrix products and convolutions): "encoder" G_z(x), "decoder" G_x(z) and "discriminator" D(x, z)."""
    with torch.device("meta"):
        model = ALI(cfg).eval()  # eval: batch norm accepts one example
        x = torch.zeros(1, *data_shape(cfg))
        z = torch.zeros(1, cfg.model.latent_dim)
        embed = model.encoder.embed
        y = None if embed is None else torch.zeros(1, embed.in_features)
    flops = {}
    for name, run in (
        ("encoder", lambda: model.encoder(x, y)),
        ("decoder", lambda: model.decoder(z, y)),
        ("discriminator", lambda: model.discriminator(x, z, y)),
    ):
        with FlopCounterMode(display=False) as counter:
            run()
        flops[name] = float(counter.get_total_flops())
    return flops


def flops_per_step(cfg: Config, batch: int) -> float:
    """About how many FLOPs one training step of ``batch`` examples costs in ``cfg``'s ALI game: the forward passes
    of one round (G_z(x), G_x(z), D on both pairs; ALICE's cycle adds G_x(z_hat) and G_z(x_tilde), the alternating
    update a second D pass), forward and backward. The K+1 game's labelled batch is left out: an estimate for
    choosing a thread count, within a factor of two."""
    f = forward_flops(cfg)
    d_passes = 2 if cfg.train.update == "alternating" else 1
    per_example = f["encoder"] + f["decoder"] + 2 * f["discriminator"] * d_passes
    if cfg.train.alice:
        per_example += f["encoder"] + f["decoder"]
    return FORWARD_AND_BACKWARD * per_example * batch


def set_training_threads(cfg: Config, device: torch.device, requested: int, dist: DistInfo) -> ThreadChoice:
    """Choose the intra-op thread count for training ``cfg`` on ``device`` (alitool.threads), set it, and return it
    with its reason. ``requested`` is ``--threads`` (0: not given); ``OMP_NUM_THREADS`` counts as a request too,
    except under torchrun, which sets it itself. A GPU run keeps PyTorch's default: its arithmetic is not on the
    CPU."""
    asked_by = "--threads"
    if not requested and not launched_by_torchrun():
        requested, asked_by = threads_from_environment(), "OMP_NUM_THREADS"
    if device.type != "cpu" and not requested:
        n = torch.get_num_threads()
        return ThreadChoice(n, f"{threads_phrase(n)}: PyTorch's default (the model runs on {device.type})")
    # Processes on this machine: LOCAL_WORLD_SIZE under torchrun (several machines share the world size).
    processes = int(os.environ.get("LOCAL_WORLD_SIZE", dist.world_size)) if dist.enabled else 1
    work = 0.0 if requested else flops_per_step(cfg, max(1, cfg.train.batch_size // dist.world_size))
    choice = choose_threads(work, requested, processes=processes, asked_by=asked_by)
    torch.set_num_threads(choice.threads)
    return choice
