"""How many CPU threads a training run should use: the cores this process may really use, how many of them other
work is using right now, and how much arithmetic one training step is.

Why not PyTorch's default (one thread per physical core of the whole machine)? Two reasons, both measured on a
2-core machine with ``alitool train mixture25 --max-steps 390``: 8.5 s with 2 threads on an idle machine, but 26.8 s
with 2 threads against 10.7 s with 1 thread beside one busy process. An intra-op thread pool that shares a core
with another process waits for its slowest thread at every operation, so a small model loses far more to a busy
neighbour (2.5x) than it could ever gain from a second thread (at most 2x, and much less when a step is hundreds of
operations of a few microseconds each, where the pool's fork and join cost as much as the arithmetic). And PyTorch
counts the machine's cores, not the ones a container's CPU quota or a ``taskset`` affinity mask leaves us.

The rule (``choose_threads``):

1. a count the user asked for (``--threads N``, or ``OMP_NUM_THREADS`` outside torchrun) wins;
2. small work (under ``SMALL_WORK_FLOPS`` per step: the 2-D mixture MLPs and the digits model) gets 1 thread;
3. with P training processes on this machine (``--nproc``, torchrun), each gets its share: available // P;
4. otherwise the free cores: the available cores minus those other work is using now (at least 1), and never more
   than the physical cores PyTorch would have used.

Torch-free and alitool-free: the caller measures the work (trainers/cpu_threads.py counts a step's FLOPs) and
applies the choice. Linux only in what it reads (/proc, /sys); elsewhere it falls back to ``os.cpu_count()`` and
an unknown load.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import NamedTuple

# Below this many floating-point operations per training step, a second thread is not worth its risk. The counts
# behind it (conv and linear arithmetic of one step, forward and backward, at each config's batch size, as
# trainers/cpu_threads.py counts it): mixture25 0.59 GFLOP, mixture25_paper 0.87, digits 1.1 (with ALICE's passes)
# against mnist and fashion-mnist 32, folder 40, cifar10 69, svhn 89, tinyimagenet 444 and celeba 2,087. A core
# does some 20-100 GFLOP/s of such small matrix products, so under 5 GFLOP a step is at most a few tens of
# milliseconds of arithmetic spread over hundreds of operations: a second thread can at best halve it, pays a
# fork and join per operation, and loses 2.5x to one busy neighbour. Between 1.1 and 32 there is no config, so the
# exact value is not critical.
SMALL_WORK_FLOPS = 5e9

CGROUP_V2_CPU_MAX = Path("/sys/fs/cgroup/cpu.max")
CGROUP_V1_QUOTA = Path("/sys/fs/cgroup/cpu/cpu.cfs_quota_us")
CGROUP_V1_PERIOD = Path("/sys/fs/cgroup/cpu/cpu.cfs_period_us")
PROC_STAT = Path("/proc/stat")
SYS_CPUS = Path("/sys/devices/system/cpu")

OVERRIDE_HINT = "--threads N overrides"


class ThreadChoice(NamedTuple):
    threads: int
    reason: str  # one line for the training log: "1 thread: small model (0.59 GFLOP/step, under 5); ..."


# ---- the cores this process may use ----------------------------------------------------------------------------


def quota_from_cpu_max(text: str) -> float | None:
    """The CPU limit in cores from cgroup v2's ``cpu.max`` text ("150000 100000" -> 1.5); None for no limit
    ("max 100000") or a text that is not a quota and period."""
    fields = text.split()
    if len(fields) != 2 or fields[0] == "max":
        return None
    return _ratio(fields[0], fields[1])


def quota_from_cfs(quota_text: str, period_text: str) -> float | None:
    """The CPU limit in cores from cgroup v1's ``cpu.cfs_quota_us`` and ``cpu.cfs_period_us`` texts; None for no
    limit (a quota of -1) or texts that are not numbers."""
    return _ratio(quota_text.strip(), period_text.strip())


def _ratio(quota: str, period: str) -> float | None:
    try:
        q, p = int(quota), int(period)
    except ValueError:
        return None
    return q / p if q > 0 and p > 0 else None


def _read(path: Path) -> str | None:
    try:
        return path.read_text(encoding="ascii")
    except (OSError, UnicodeDecodeError):
        return None


def cgroup_cpu_limit(
    cpu_max: Path = CGROUP_V2_CPU_MAX, cfs_quota: Path = CGROUP_V1_QUOTA, cfs_period: Path = CGROUP_V1_PERIOD
) -> float | None:
    """The cgroup's CPU quota in cores (v2 first, then v1), or None where no quota is set or readable."""
    text = _read(cpu_max)
    if text is not None:
        return quota_from_cpu_max(text)
    quota, period = _read(cfs_quota), _read(cfs_period)
    if quota is None or period is None:
        return None
    return quota_from_cfs(quota, period)


def allowed_cpus() -> list[int]:
    """The CPU numbers this process may run on (its affinity mask); all of them where the OS does not say."""
    if hasattr(os, "sched_getaffinity"):
        return sorted(os.sched_getaffinity(0))
    return list(range(os.cpu_count() or 1))


def cores_for_quota(limit: float) -> int:
    """Threads worth running under a quota of ``limit`` cores: rounded up (1.5 cores keep 2 threads busy part of
    the time each, and the quota is spread over them), at least 1."""
    return max(1, math.ceil(limit))


def available_cores(
    cpu_max: Path = CGROUP_V2_CPU_MAX, cfs_quota: Path = CGROUP_V1_QUOTA, cfs_period: Path = CGROUP_V1_PERIOD
) -> int:
    """The cores this process may really use: its affinity mask, capped by the cgroup CPU quota
    (``cores_for_quota``). At least 1."""
    cores = len(allowed_cpus())
    limit = cgroup_cpu_limit(cpu_max, cfs_quota, cfs_period)
    if limit is not None:
        cores = min(cores, cores_for_quota(limit))
    return max(1, cores)


def physical_cores(cpus: Iterable[int] | None = None, sysfs: Path = SYS_CPUS) -> int:
    """How many physical cores ``cpus`` (default: ``allowed_cpus()``) sit on: hyperthread siblings count once, as
    in PyTorch's default thread count. Where the topology is unreadable, each CPU counts as a core."""
    cpus = allowed_cpus() if cpus is None else list(cpus)
    cores = set()
    for cpu in cpus:
        topology = sysfs / f"cpu{cpu}" / "topology"
        siblings = _read(topology / "core_cpus_list") or _read(topology / "thread_siblings_list")
        if siblings is None:
            return max(1, len(cpus))
        cores.add(siblings.strip())
    return max(1, len(cores))


# ---- how busy those cores are ------------------------------------------------------------------------------------


def cpu_jiffies(stat_text: str, cpus: Iterable[int] | None = None) -> tuple[int, int]:
    """(busy, total) jiffies since boot, summed over the ``cpuN`` lines of /proc/stat's text for ``cpus`` (all
    CPUs when None). Idle time is idle + iowait; busy is user, nice, system, irq, softirq and steal (guest time is
    already inside user)."""
    wanted = None if cpus is None else {f"cpu{n}" for n in cpus}
    busy = total = 0
    for line in stat_text.splitlines():
        name, _, rest = line.partition(" ")
        if not name.startswith("cpu") or name == "cpu" or (wanted is not None and name not in wanted):
            continue
        user, nice, system, idle, iowait, irq, softirq, steal = (int(v) for v in rest.split()[:8])
        busy += user + nice + system + irq + softirq + steal
        total += user + nice + system + idle + iowait + irq + softirq + steal
    return busy, total


def _own_cpu_seconds() -> float:
    times = os.times()
    return times.user + times.system


def busy_cores(sample_s: float = 0.1, stat: Path = PROC_STAT) -> float | None:
    """How many of this process's available cores other work is using right now: two reads of /proc/stat
    ``sample_s`` apart, over the CPUs of our affinity mask, less what this process itself used meanwhile. Under a
    cgroup quota smaller than the mask, the load is scaled to the quota (the other work is taken to spread evenly
    over the mask's CPUs). None where /proc/stat does not exist (macOS, Windows)."""
    cpus = allowed_cpus()
    first = _read(stat)
    if first is None:
        return None
    own_before, wall_before = _own_cpu_seconds(), time.monotonic()
    time.sleep(sample_s)
    second = _read(stat)
    own_after, wall_after = _own_cpu_seconds(), time.monotonic()
    if second is None:
        return None
    busy_before, total_before = cpu_jiffies(first, cpus)
    busy_after, total_after = cpu_jiffies(second, cpus)
    if total_after <= total_before:  # less than a jiffy passed: nothing to tell
        return None
    busy = (busy_after - busy_before) / (total_after - total_before) * len(cpus)
    busy -= (own_after - own_before) / max(wall_after - wall_before, 1e-9)
    busy *= min(1.0, available_cores() / len(cpus))
    return max(0.0, busy)


# ---- the choice ----------------------------------------------------------------------------------------------------


def threads_from_environment(environ: dict[str, str] | None = None) -> int:
    """``OMP_NUM_THREADS`` as a positive count, else 0 (unset or not a positive number)."""
    value = (os.environ if environ is None else environ).get("OMP_NUM_THREADS", "")
    try:
        return max(0, int(value))
    except ValueError:
        return 0


def _gflop(flops: float) -> str:
    """Two significant digits below 10 GFLOP (0.59, 1.1, 5), whole numbers above (89, 2,087)."""
    g = flops / 1e9
    return f"{g:.2g}" if g < 10 else f"{g:,.0f}"


def threads_phrase(n: int) -> str:
    """'1 thread', '2 threads': a count with its noun."""
    return f"{n} thread" if n == 1 else f"{n} threads"


def choose_threads(
    work_flops_per_step: float,
    requested: int = 0,
    *,
    processes: int = 1,
    asked_by: str = "--threads",
    available: int | None = None,
    physical: int | None = None,
    measure_busy: Callable[[], float | None] = busy_cores,
) -> ThreadChoice:
    """The intra-op thread count for training work of ``work_flops_per_step`` FLOPs per step (the module docstring
    gives the rule), and the one-line reason for the log. ``requested`` > 0 wins (``asked_by`` names where it came
    from); ``processes``: training processes on this machine. ``available`` and ``physical`` default to
    ``available_cores()`` and ``physical_cores()``; ``measure_busy`` is called only for large single-process work
    (it sleeps ``busy_cores``' sample time)."""
    if requested > 0:
        return ThreadChoice(requested, f"{threads_phrase(requested)}: as asked ({asked_by})")
    size = f"{_gflop(work_flops_per_step)} GFLOP/step"
    if work_flops_per_step < SMALL_WORK_FLOPS:
        return ThreadChoice(1, f"1 thread: small model ({size}, under {_gflop(SMALL_WORK_FLOPS)}); {OVERRIDE_HINT}")
    available = available_cores() if available is None else available
    physical = physical_cores() if physical is None else physical
    if processes > 1:
        # The sibling processes would count as other work in a load sample: each takes its share instead.
        n = max(1, min(available, physical) // processes)
        return ThreadChoice(
            n, f"{threads_phrase(n)}: {size}, {available} cores shared by {processes} processes; {OVERRIDE_HINT}"
        )
    busy = measure_busy()
    if busy is None:
        n = min(available, physical)
        return ThreadChoice(
            n, f"{threads_phrase(n)}: {size}, {available} cores available (load unknown); {OVERRIDE_HINT}"
        )
    free = max(1, available - round(busy))
    n = min(free, physical)
    cap = f", one per physical core ({physical})" if n < free else ""
    return ThreadChoice(
        n,
        f"{threads_phrase(n)}: {size}, {free} of {available} cores free (other work uses "
        f"{busy:.1f}){cap}; {OVERRIDE_HINT}",
    )


def choose_inference_threads(
    requested: int = 0,
    *,
    available: int | None = None,
    physical: int | None = None,
    measure_busy: Callable[[], float | None] = busy_cores,
) -> ThreadChoice:
    """The model's intra-op thread count for ``encode`` / ``reconstruct`` / ``interpolate`` / ``sample``:
    ``requested`` (``--threads N``) wins; otherwise the free cores, as for large training work: the cores of the
    affinity mask and cgroup quota (ONNX Runtime and PyTorch would count the whole machine's, 64 threads in a
    2-core container), less what other work uses now, at most one per physical core, at least 1. There is no
    small-work rule: a batch of 64 images is tens of milliseconds of arithmetic, worth a second core."""
    if requested > 0:
        return ThreadChoice(requested, f"{threads_phrase(requested)}: as asked (--threads)")
    available = available_cores() if available is None else available
    physical = physical_cores() if physical is None else physical
    busy = measure_busy()
    if busy is None:
        n = min(available, physical)
        return ThreadChoice(n, f"{threads_phrase(n)}: {available} cores available (load unknown); {OVERRIDE_HINT}")
    free = max(1, available - round(busy))
    n = min(free, physical)
    return ThreadChoice(
        n, f"{threads_phrase(n)}: {free} of {available} cores free (other work uses {busy:.1f}); {OVERRIDE_HINT}"
    )
