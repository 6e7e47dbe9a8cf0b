"""Data-parallel training on PyTorch's own engine: torch.distributed + DistributedDataParallel.

Launch: ``alitool train ... --nproc N`` re-runs itself under ``torch.distributed.run`` (torchrun), or run
``torchrun --nproc-per-node N -m alitool.cli train ...`` yourself (multi-node: torchrun's usual flags).
Backend: NCCL on CUDA, gloo on CPU.

Batch norm stays per replica (each process normalises with its own half of the batch), not SyncBatchNorm:
SyncBatchNorm only runs on CUDA, so a CPU run could not use it, and per-replica statistics keep a 1-process and
an N-process run of the same global batch close (each replica's batch is still 50+ examples for the paper's
configs). There is no switch for SyncBatchNorm: on CUDA, converting the models with
``torch.nn.SyncBatchNorm.convert_sync_batchnorm`` where DDP wraps them would be the place to add one; no run has
shown a need for it.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def launched_by_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def init_from_env(device_name: str = "auto") -> DistInfo:
    """Join the process group torchrun set up (env:// rendezvous); a plain run is world size 1."""
    if not launched_by_torchrun() or int(os.environ["WORLD_SIZE"]) == 1:
        return DistInfo()
    if dist.is_initialized():
        return DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)))
    use_cuda = torch.cuda.is_available() and device_name in ("auto", "cuda") or device_name.startswith("cuda")
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if use_cuda:
        torch.cuda.set_device(local_rank)
    dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return DistInfo(dist.get_rank(), dist.get_world_size(), local_rank)


def device_for(info: DistInfo, device: torch.device) -> torch.device:
    """Each process drives its own GPU (cuda:LOCAL_RANK); CPU processes share the CPU."""
    if info.enabled and device.type == "cuda":
        return torch.device("cuda", info.local_rank)
    return device


def broadcast_object(value, info: DistInfo):
    """Rank 0's ``value`` on every rank (e.g. the run folder rank 0 created)."""
    if not info.enabled:
        return value
    box = [value if info.is_main else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def average_scalars(values: dict[str, torch.Tensor], info: DistInfo) -> dict[str, torch.Tensor]:
    """Mean of each metric over processes, so every rank logs and NaN-checks the same numbers."""
    if not info.enabled:
        return values
    keys = sorted(values)
    stacked = torch.stack([values[k].detach().float() for k in keys])
    dist.all_reduce(stacked, op=dist.ReduceOp.SUM)
    stacked /= info.world_size
    return dict(zip(keys, stacked, strict=True))


def shutdown(info: DistInfo) -> None:
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()


def relaunch_with_torchrun(nproc: int, argv: list[str]) -> int:
    """Run ``alitool <argv>`` under torchrun with ``nproc`` processes on this machine; returns its exit code."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
           "-m", "alitool.cli", *argv]
    env = dict(os.environ)
    # Two processes on a CPU each default to all cores: split them so they do not oversubscribe.
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    return subprocess.call(cmd, env=env)
