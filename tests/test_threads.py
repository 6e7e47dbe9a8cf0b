"""The CPU thread policy (alitool/threads.py, trainers/cpu_threads.py): real cgroup and /proc file texts, a real
affinity mask, the choice itself, and what `alitool train` and `alitool encode` do with it."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from helpers import invoke_cli, save_tiny_model, write_digit_files

from alitool.config import load_config
from alitool.threads import (
    SMALL_WORK_FLOPS,
    allowed_cpus,
    available_cores,
    busy_cores,
    cgroup_cpu_limit,
    choose_inference_threads,
    choose_threads,
    cores_for_quota,
    cpu_jiffies,
    physical_cores,
    quota_from_cfs,
    quota_from_cpu_max,
    threads_from_environment,
)
from alitool.trainers.cpu_threads import flops_per_step, forward_flops, set_training_threads
from alitool.trainers.distributed import DistInfo

# A real /proc/stat of a 2-CPU machine (kernel 5.x: ten columns per cpu line), the tail shortened.
PROC_STAT = """\
cpu  710599 0 43717 2361913 4195 0 1918 17725 0 0
cpu0 337330 0 19703 1200287 2790 0 728 9290 0 0
cpu1 373268 0 24014 1161626 1405 0 1190 8435 0 0
intr 91832714 0 9 0 0 0 0 0 0 0 0 0 0 156 0 0 0 0 0 0 0 0 0 0 0 0 0
ctxt 180451239
btime 1763798431
processes 14536
procs_running 3
procs_blocked 0
"""


def _files(tmp_path: Path, **texts: str) -> dict[str, Path]:
    """Each text written to its own file under tmp_path (cgroup files as the kernel shows them); a name given
    None stays absent."""
    paths = {}
    for name, text in texts.items():
        paths[name] = tmp_path / name
        if text is not None:
            paths[name].write_text(text)
    return paths


def test_the_policy_module_is_torch_free():
    """alitool/threads.py imports the standard library only, so the running side may use it without PyTorch."""
    tree = ast.parse((Path(__file__).parent.parent / "alitool" / "threads.py").read_text(encoding="utf-8"))
    names = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    names |= {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}
    assert names and all(name.partition(".")[0] in sys.stdlib_module_names for name in names), names


def test_cgroup_v2_cpu_max(tmp_path):
    assert quota_from_cpu_max("max 100000\n") is None
    assert quota_from_cpu_max("150000 100000\n") == 1.5
    assert quota_from_cpu_max("50000 100000\n") == 0.5
    assert quota_from_cpu_max("") is None
    f = _files(tmp_path, v2="max 100000\n", v1q=None, v1p=None)
    assert cgroup_cpu_limit(f["v2"], f["v1q"], f["v1p"]) is None
    assert available_cores(f["v2"], f["v1q"], f["v1p"]) == len(allowed_cpus())
    # a quota of one core caps the affinity mask (this machine's mask has 2 or more CPUs in CI)
    f["v2"].write_text("100000 100000\n")
    assert available_cores(f["v2"], f["v1q"], f["v1p"]) == 1
    f["v2"].write_text("150000 100000\n")
    assert available_cores(f["v2"], f["v1q"], f["v1p"]) == min(2, len(allowed_cpus()))


def test_cgroup_v1_cfs_files(tmp_path):
    assert quota_from_cfs("-1\n", "100000\n") is None
    assert quota_from_cfs("150000\n", "100000\n") == 1.5
    assert quota_from_cfs("not a number", "100000") is None
    f = _files(tmp_path, v2=None, v1q="-1\n", v1p="100000\n")
    assert cgroup_cpu_limit(f["v2"], f["v1q"], f["v1p"]) is None  # v2 absent, v1 without a quota
    f["v1q"].write_text("50000\n")
    assert cgroup_cpu_limit(f["v2"], f["v1q"], f["v1p"]) == 0.5
    assert available_cores(f["v2"], f["v1q"], f["v1p"]) == 1
    # v2 wins where both exist (a hybrid mount): its "max" means no limit even if v1 says 0.5
    (tmp_path / "both").mkdir()
    f = _files(tmp_path / "both", v2="max 100000\n", v1q="50000\n", v1p="100000\n")
    assert cgroup_cpu_limit(f["v2"], f["v1q"], f["v1p"]) is None


def test_a_quota_rounds_up_to_whole_cores():
    assert cores_for_quota(1.5) == 2  # 150000 / 100000
    assert cores_for_quota(2.0) == 2
    assert cores_for_quota(0.01) == 1  # v1's smallest quota, 1 ms per 100 ms


@pytest.mark.slow
@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="no affinity masks on this OS")
def test_an_affinity_mask_of_one_cpu_is_one_core():
    code = (
        "import os; os.sched_setaffinity(0, {min(os.sched_getaffinity(0))}); "
        "from alitool.threads import available_cores, physical_cores; print(available_cores(), physical_cores())"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.split() == ["1", "1"]


def test_physical_cores_count_hyperthread_siblings_once(tmp_path):
    # a sysfs tree of 4 CPUs on 2 cores, as the kernel lays it out (core_cpus_list since 5.6)
    for cpu, siblings in ((0, "0,2"), (1, "1,3"), (2, "0,2"), (3, "1,3")):
        (tmp_path / f"cpu{cpu}" / "topology").mkdir(parents=True)
        (tmp_path / f"cpu{cpu}" / "topology" / "core_cpus_list").write_text(siblings + "\n")
    assert physical_cores([0, 1, 2, 3], tmp_path) == 2
    assert physical_cores([0, 2], tmp_path) == 1
    assert physical_cores([0, 7], tmp_path) == 2  # cpu7 has no topology: each CPU counts as a core
    assert 1 <= physical_cores() <= len(allowed_cpus())  # this machine's own


def test_proc_stat_jiffies():
    # busy = user + nice + system + irq + softirq + steal; total adds idle + iowait (guest is inside user)
    assert cpu_jiffies(PROC_STAT, [0]) == (337330 + 19703 + 728 + 9290, 337330 + 19703 + 1200287 + 2790 + 728 + 9290)
    both = cpu_jiffies(PROC_STAT)
    assert both == tuple(a + b for a, b in zip(cpu_jiffies(PROC_STAT, [0]), cpu_jiffies(PROC_STAT, [1]), strict=True))
    assert cpu_jiffies(PROC_STAT, [5]) == (0, 0)


@pytest.mark.skipif(not Path("/proc/stat").exists(), reason="no /proc/stat on this OS")
def test_busy_cores_on_this_machine_is_a_share_of_its_cores():
    busy = busy_cores(0.05)
    assert busy is not None and 0.0 <= busy <= len(allowed_cpus())
    assert busy_cores(0.01, stat=Path("/nonexistent/stat")) is None


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/stat").exists(), reason="no /proc/stat on this OS")
def test_a_busy_neighbour_is_seen():
    spinner = subprocess.Popen(
        [sys.executable, "-c", "print('spinning', flush=True)\nwhile True: pass"], stdout=subprocess.PIPE, text=True
    )
    try:
        assert spinner.stdout.readline().strip() == "spinning"
        time.sleep(0.2)
        # other work on the machine only adds to what the spinner uses
        assert busy_cores(0.5) >= 0.5
    finally:
        spinner.kill()
        spinner.wait()


def _no_load_sample():
    pytest.fail("the load was sampled where the rule does not need it")


def test_a_requested_count_wins():
    assert choose_threads(1e12, 3, available=2, physical=2, measure_busy=_no_load_sample).threads == 3
    choice = choose_threads(1e3, 2, asked_by="OMP_NUM_THREADS", measure_busy=_no_load_sample)
    assert choice == (2, "2 threads: as asked (OMP_NUM_THREADS)")


def test_small_work_gets_one_thread_without_sampling_the_load():
    choice = choose_threads(0.59e9, available=8, physical=8, measure_busy=_no_load_sample)
    assert choice.threads == 1
    assert choice.reason == "1 thread: small model (0.59 GFLOP/step, under 5); --threads N overrides"


def test_large_work_takes_the_free_cores():
    def busy(value):
        return lambda: value

    assert choose_threads(89e9, available=4, physical=4, measure_busy=busy(0.0)).threads == 4
    with_neighbour = choose_threads(89e9, available=4, physical=4, measure_busy=busy(1.0))
    assert with_neighbour.threads == 3
    assert with_neighbour.reason == (
        "3 threads: 89 GFLOP/step, 3 of 4 cores free (other work uses 1.0); --threads N overrides"
    )
    assert choose_threads(89e9, available=2, physical=2, measure_busy=busy(1.2)).threads == 1
    assert choose_threads(89e9, available=2, physical=2, measure_busy=busy(7.0)).threads == 1  # at least 1
    # never more than one per physical core, which is what PyTorch would have used
    capped = choose_threads(89e9, available=16, physical=8, measure_busy=busy(0.0))
    assert capped.threads == 8 and "one per physical core (8)" in capped.reason
    unknown = choose_threads(89e9, available=4, physical=4, measure_busy=busy(None))
    assert unknown.threads == 4 and "load unknown" in unknown.reason


def test_inference_takes_the_free_cores_of_its_mask_whatever_the_model():
    assert choose_inference_threads(3, measure_busy=_no_load_sample) == (3, "3 threads: as asked (--threads)")
    idle = choose_inference_threads(available=2, physical=2, measure_busy=lambda: 0.1)
    assert idle.threads == 2 and idle.reason.startswith("2 threads: 2 of 2 cores free")
    assert choose_inference_threads(available=2, physical=2, measure_busy=lambda: 1.0).threads == 1
    assert choose_inference_threads(available=2, physical=2, measure_busy=lambda: 5.0).threads == 1  # at least 1
    # a container's quota (available) below the machine's cores (physical), and hyperthreads above them
    assert choose_inference_threads(available=2, physical=64, measure_busy=lambda: 0.0).threads == 2
    assert choose_inference_threads(available=16, physical=8, measure_busy=lambda: 0.0).threads == 8
    assert "load unknown" in choose_inference_threads(available=4, physical=4, measure_busy=lambda: None).reason


def test_processes_on_one_machine_share_its_cores():
    assert choose_threads(89e9, processes=2, available=8, physical=8, measure_busy=_no_load_sample).threads == 4
    assert choose_threads(89e9, processes=4, available=2, physical=2, measure_busy=_no_load_sample).threads == 1
    assert choose_threads(1e9, processes=2, available=8, physical=8, measure_busy=_no_load_sample).threads == 1


def test_omp_num_threads_is_read_as_a_count():
    assert threads_from_environment({"OMP_NUM_THREADS": "3"}) == 3
    assert threads_from_environment({"OMP_NUM_THREADS": ""}) == 0
    assert threads_from_environment({"OMP_NUM_THREADS": "four"}) == 0
    assert threads_from_environment({}) == 0


def test_the_step_count_is_the_networks_arithmetic():
    # mixture25's G_x is linear 2 -> 128 -> 128 -> 128 -> 2: two FLOPs per weight per example
    assert forward_flops(load_config("mixture25"))["decoder"] == 2 * (2 * 128 + 128 * 128 + 128 * 128 + 128 * 2)
    state = torch.get_rng_state()
    sizes = {
        name: flops_per_step(cfg, cfg.train.batch_size)
        for name in ("mixture25", "digits", "svhn")
        for cfg in [load_config(name)]
    }
    assert torch.equal(state, torch.get_rng_state())  # no random number drawn: training stays reproducible
    # the threshold sits between the small configs and the image models
    assert sizes["mixture25"] < sizes["digits"] < SMALL_WORK_FLOPS < sizes["svhn"]
    # a convolution reuses its weights at every position: far more than parameters x batch x 6 (14x for SVHN)
    from alitool.models import ALI

    svhn = load_config("svhn")
    with torch.device("meta"):
        params = sum(p.numel() for p in ALI(svhn).parameters())
    assert sizes["svhn"] > 5 * 6 * params * svhn.train.batch_size
    # a conditional model is counted with its y: the embeddings add to every network
    digits = forward_flops(load_config("digits"))
    conditional = forward_flops(
        load_config(
            "digits", ["model.conditional=true", "model.y_embed_dim=8", "model.y_kind=class", "model.y_names=[a,b,c]"]
        )
    )
    assert all(conditional[name] > digits[name] for name in digits)


def test_set_training_threads_reads_requests_and_leaves_gpu_runs_alone(monkeypatch):
    cfg = load_config("svhn")
    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    torch.set_num_threads(1)
    choice = set_training_threads(cfg, torch.device("cpu"), 0, DistInfo())
    assert choice.threads == 2 == torch.get_num_threads() and "OMP_NUM_THREADS" in choice.reason
    assert set_training_threads(cfg, torch.device("cpu"), 1, DistInfo()).threads == 1 == torch.get_num_threads()
    gpu = set_training_threads(cfg, torch.device("cuda"), 0, DistInfo())  # OMP_NUM_THREADS still asks for 2
    assert gpu.threads == 2
    monkeypatch.delenv("OMP_NUM_THREADS")
    torch.set_num_threads(1)
    gpu = set_training_threads(cfg, torch.device("cuda"), 0, DistInfo())
    assert gpu.threads == 1 == torch.get_num_threads() and "PyTorch's default" in gpu.reason


def test_under_torchrun_each_process_takes_its_share(monkeypatch):
    # torchrun's environment, with the OMP_NUM_THREADS it sets itself (not the user's request)
    for key, value in {"RANK": "0", "WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2", "OMP_NUM_THREADS": "1"}.items():
        monkeypatch.setenv(key, value)
    choice = set_training_threads(load_config("svhn"), torch.device("cpu"), 0, DistInfo(rank=0, world_size=2))
    assert choice.threads == max(1, min(available_cores(), physical_cores()) // 2)
    assert "shared by 2 processes" in choice.reason


@pytest.mark.slow
def test_train_logs_the_choice_once_and_uses_it(tmp_path, monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    torch.set_num_threads(2)  # not what the policy will choose for the 2-D mixture (conftest restores it)
    result = invoke_cli("train", "mixture25", "--max-steps", 2, "--out", tmp_path / "run")
    assert result.exit_code == 0, result.output
    lines = [line for line in result.output.splitlines() if "--threads N overrides" in line]
    assert lines == ["1 thread: small model (0.59 GFLOP/step, under 5); --threads N overrides"]
    assert torch.get_num_threads() == 1


@pytest.mark.slow
def test_encode_threads_option_reaches_both_runtimes(tmp_path):
    from alitool.backends.opening import open_model
    from alitool.export.onnx import export_networks
    from alitool.trained_networks import load_networks_and_weights, meta_from_config

    checkpoint = save_tiny_model(tmp_path / "tiny.pt")
    pngs, _ = write_digit_files(tmp_path / "digits", 4)
    torch.set_num_threads(1)  # a checkpoint runs in PyTorch, whose count is process-wide (conftest restores it)
    result = invoke_cli(
        "encode", tmp_path / "digits", "--model", checkpoint, "--threads", 2, "--out", tmp_path / "feats.npy"
    )
    assert result.exit_code == 0, result.output
    assert torch.get_num_threads() == 2
    cfg, encoder, decoder, weights = load_networks_and_weights(checkpoint, torch.device("cpu"), False)
    export_networks(
        encoder,
        decoder,
        meta_from_config(cfg, source_sha256="0" * 64, weights=weights),
        tmp_path / "export",
        exporter="torchscript",
        log=lambda _: None,
    )
    chosen = invoke_cli("encode", tmp_path / "digits", "--model", tmp_path / "export", "--out", tmp_path / "f2.npy")
    assert chosen.exit_code == 0 and "model threads: " in chosen.output, chosen.output
    onnx = open_model(tmp_path / "export", backend="onnxruntime", device="cpu", threads=1)
    assert onnx.sessions["encoder"].get_session_options().intra_op_num_threads == 1
