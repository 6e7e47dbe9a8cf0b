"""Representation quality over training seeds: one table row per model kind, mean +- std over its runs (one run
per training seed), from the JSON reports that `alitool eval svm` and `alitool eval classify` wrote.

The paper's +- (table 1) is over runs; `alitool eval svm`'s own +- is over labelled sets of one model. Here each
run contributes the mean over its labelled sets, and the row's +- is the standard deviation (ddof 1) of those
means over the training seeds. Every row must come from the same splits (labels, repeats, validation size, split
seed, C grid, dataset), or the rows would not be like for like; the script refuses to mix them.

    python experiments/seeds_table.py --baseline untrained \\
        "untrained=runs/fm-init-*" "ALI + ALICE=runs/fm-alice-*" "plain ALI=runs/fm-ali-*" "K+1 ALI=runs/fm-kp1-*"

Each ROW=GLOB names the run folders of one kind; their reports are read from <run>/eval/. The margin column is the
row's mean test error minus the baseline row's (negative: better than the baseline), +- the standard error of
that difference (each row's std over seeds / sqrt(runs), combined as independent).
"""

from __future__ import annotations

import argparse
import glob
import json
import math
import statistics
import sys
from pathlib import Path

# What must be equal across every report of one table: the splits and the protocol.
SAME_SPLITS = ("dataset", "labels", "repeats", "val_size", "seed", "c_grid", "protocol", "features")


def read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise SystemExit(f"seeds_table: {path}: cannot read the report ({type(e).__name__})") from e


def svm_error(run: Path, features: str) -> tuple[float, dict]:
    """The run's mean test error of the SVM row on its features, and the report (for the split check)."""
    reports = sorted((run / "eval").glob(f"svm_*_{features}.json"))
    if len(reports) != 1:
        raise SystemExit(f"seeds_table: {run}: expected one eval/svm_*_{features}.json, found {len(reports)} "
                         f"(run: alitool eval svm {run} --features {features})")
    report = read_json(reports[0])
    rows = [r for r in report["results"] if r["protocol"] == "alitool" and r["name"] != "raw pixels"
            and not r["name"].startswith("PCA")]
    return rows[0]["test_error_mean"], report


def classify_error(run: Path) -> float | None:
    reports = sorted((run / "eval").glob("classify_*.json"))
    return read_json(reports[0])["test_error"] if reports else None


def mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def table(rows: dict[str, list[Path]], baseline: str | None, features: str = "paper") -> str:
    splits: dict[str, object] | None = None
    errors: dict[str, list[float]] = {}
    classify: dict[str, list[float]] = {}
    for name, runs in rows.items():
        for run in runs:
            error, report = svm_error(run, features)
            here = {key: report.get(key) for key in SAME_SPLITS}
            if splits is None:
                splits = here
            elif here != splits:
                differs = [k for k in SAME_SPLITS if here[k] != splits[k]]
                raise SystemExit(f"seeds_table: {run}: its report's {', '.join(differs)} differ from the other "
                                 "reports': the rows would not use the same labelled sets")
            errors.setdefault(name, []).append(100 * error)
            kplus1 = classify_error(run)
            if kplus1 is not None:
                classify.setdefault(name, []).append(100 * kplus1)
    assert splits is not None
    base = mean_std(errors[baseline]) if baseline else None
    lines = [f"L2-SVM on {features} features, {splits['dataset']}, {splits['labels']} labels, {splits['repeats']} "
             f"labelled sets (split seed {splits['seed']}), validation {splits['val_size']}; +- over training seeds "
             "(ddof 1)",
             "| model | runs | SVM test error % per run | SVM test error % | margin over "
             f"{baseline or '-'} (points) | K+1 classifier error % |",
             "|---|---|---|---|---|---|"]
    for name, values in errors.items():
        mean, std = mean_std(values)
        margin = "-"
        if base and name != baseline:
            spread = math.hypot(std / math.sqrt(len(values)), base[1] / math.sqrt(len(errors[baseline])))
            margin = f"{mean - base[0]:+.2f} +- {spread:.2f}"
        own = "-"
        if name in classify:
            k_mean, k_std = mean_std(classify[name])
            own = f"{k_mean:.2f} +- {k_std:.2f} ({', '.join(f'{v:.2f}' for v in classify[name])})"
        per_run = ", ".join(f"{v:.2f}" for v in values)
        lines.append(f"| {name} | {len(values)} | {per_run} | {mean:.2f} +- {std:.2f} | {margin} | {own} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("rows", nargs="+", metavar="ROW=GLOB")
    parser.add_argument("--baseline", help="the row the margins are taken against (e.g. the untrained network)")
    parser.add_argument("--features", default="paper", choices=["paper", "mean"])
    args = parser.parse_args(argv)
    rows: dict[str, list[Path]] = {}
    for spec in args.rows:
        name, sep, pattern = spec.partition("=")
        if not sep:
            raise SystemExit(f"seeds_table: {spec!r}: expected ROW=GLOB")
        runs = [Path(p) for p in sorted(glob.glob(pattern)) if Path(p).is_dir()]
        if not runs:
            raise SystemExit(f"seeds_table: {pattern!r}: no run folder matches")
        rows[name] = runs
    if args.baseline and args.baseline not in rows:
        raise SystemExit(f"seeds_table: --baseline {args.baseline!r} is not one of the rows")
    print(table(rows, args.baseline, args.features))


if __name__ == "__main__":
    main(sys.argv[1:])
