"""Training time of the small models under the thread policy against a fixed thread count, idle and beside a busy
neighbour, in one run.

For each model (the 2-D mixture, section 4.5, 390 steps; the digits model, 440 steps) and each machine state
(idle; one busy neighbour: a process spinning on one core for the whole command), it runs
``alitool train MODEL --max-steps N`` as a user does, with ``--threads <all cores>`` (PyTorch's own default, what
alitool did before the policy) and with no ``--threads`` (the policy of alitool/threads.py), and prints wall
seconds and CPU seconds of the whole command (imports and start-up included), the thread count the policy chose,
and the ratio fixed / policy. The variants take turns within each round; medians over --rounds.

    python benchmarks/thread_policy.py [--rounds 2] [--models mixture25,digits]
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from alitool.cpu_features import cpuinfo

STEPS = {"mixture25": 390, "digits": 440}
SPIN = "while True:\n    pass\n"


def run_training(model: str, steps: int, threads: int | None, workdir: Path) -> tuple[float, float, str]:
    """(wall s, CPU s of the command and its children, the policy's log line or '')."""
    out = Path(tempfile.mkdtemp(dir=workdir))
    args = [sys.executable, "-m", "alitool.cli", "train", model, "--max-steps", str(steps), "--out", str(out / "run")]
    if threads is not None:
        args += ["--threads", str(threads)]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.run(args, capture_output=True, text=True, env={**os.environ, "ALITOOL_OFFLINE": "1"})
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(args)} failed:\n{proc.stderr[-2000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    chosen = next((line for line in (proc.stdout + proc.stderr).splitlines() if re.search(r"\bthreads?\b", line)), "")
    return wall, cpu, chosen.strip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--models", default="mixture25,digits")
    args = parser.parse_args()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    info = cpuinfo()
    print(f"CPU: {info[0] if info else 'unknown'}; {cores} cores available; load before start "
          f"{os.getloadavg()[0]:.2f}; {time.strftime('%Y-%m-%d')}")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        for state in ("idle", "busy neighbour"):
            spinner = subprocess.Popen([sys.executable, "-c", SPIN]) if state != "idle" else None
            try:
                time.sleep(0.5 if spinner else 0)
                for model in args.models.split(","):
                    times: dict[str, list[tuple[float, float]]] = {"fixed": [], "policy": []}
                    chosen = ""
                    for _ in range(args.rounds):
                        wall, cpu, _line = run_training(model, STEPS[model], cores, workdir)
                        times["fixed"].append((wall, cpu))
                        wall, cpu, chosen = run_training(model, STEPS[model], None, workdir)
                        times["policy"].append((wall, cpu))
                    med = {k: (statistics.median(w for w, _ in v), statistics.median(c for _, c in v))
                           for k, v in times.items()}
                    rows.append((model, state, med, chosen))
            finally:
                if spinner:
                    spinner.kill()
                    spinner.wait()
    print(f"\n| model, steps | machine | --threads {cores} (before): wall s / CPU s | policy (after): wall s / CPU s "
          f"| before / after (wall) | the policy's choice |")
    print("|---|---|---|---|---|---|")
    for model, state, med, chosen in rows:
        (fw, fc), (pw, pc) = med["fixed"], med["policy"]
        print(f"| {model}, {STEPS[model]} | {state} | {fw:.1f} / {fc:.1f} | {pw:.1f} / {pc:.1f} | {fw / pw:.2f}x "
              f"| {chosen[:90]} |")


if __name__ == "__main__":
    main()
