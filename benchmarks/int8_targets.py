"""INT8 encoder files on the CPUs they are deployed to: each INT8 scheme (export/quantize.py SCHEMES) of each
model, run natively and under emulation as an AVX2-only x86 CPU and as ARM64, against the fp32 encoder.

Why: ONNX Runtime's int8 kernels differ by CPU. On x86 without VNNI/AMX they add u8 x s8 products in saturating
16-bit sums (``vpmaddubsw``), so a file that is faithful on the export machine can return wrong features on the
deployment one (alitool/cpu_features.py). The emulation is qemu-user through the ``cross-cpu`` tool (an AVX2-only
x86 is ``qemu-x86_64 -cpu Haswell``, where ONNX Runtime's MLAS picks its AVX2 kernels; ARM64 runs an arm64
Python with onnxruntime and numpy only). Emulated timings mean nothing, so speed is measured natively only.

Fidelity: z_mean of each INT8 file against the fp32 file on the held-out images (the test split): cosine mean and
minimum, relative error ||z_int8 - z_fp32|| / ||z_fp32||. For a labelled dataset also one downstream figure: a
logistic regression fitted on fp32 z_mean of the training split (as a server would), scored on the test split's
z_mean from each file on each CPU; the fp32 row is its accuracy on fp32 features.

Speed (native only): images/s at batches 1, 64 and 256, median of several timed repeats, for the fp32 encoder
(latent outputs only, like the INT8 files) and each scheme; with ``--svhn`` also the paper's SVHN architecture at
random init, calibrated on random-uniform images: its speed figures are valid (speed does not depend on the
weights), its fidelity is not measured.

    python benchmarks/int8_targets.py runs/digits [runs/fashion-mnist] [--svhn] [--skip-speed] [--skip-emulation]

The same file is the emulated side's script (``--eval DIR``): that mode imports numpy and onnxruntime only.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
# CI and the development machines lay the shared tools folder beside the repository clone.
CROSS_CPU = ROOT.parent / "shared" / "tools" / "cross-cpu"
TARGETS = ("native", "x86-avx2", "aarch64")
BATCHES = (1, 64, 256)
FP32 = "fp32"
EVAL_BATCH = 128


# ---------------------------------------------------------------------------------------------------------
# The evaluated side: numpy + onnxruntime only (it also runs under ARM64 emulation).


def eval_folder(folder: Path, label: str) -> None:
    """z_mean of every ``*.onnx`` in ``folder`` on ``folder/heldout.npy``, one thread, saved as
    ``folder/<label>/<name>.npy``."""
    import onnxruntime as ort

    images = np.load(folder / "heldout.npy")
    out = folder / label
    out.mkdir(exist_ok=True)
    for model in sorted(folder.glob("*.onnx")):
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.log_severity_level = 3
        session = ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
        z = np.concatenate([session.run(["z_mean"], {"images": images[i:i + EVAL_BATCH]})[0]
                            for i in range(0, len(images), EVAL_BATCH)])
        np.save(out / f"{model.stem}.npy", z)
    print(f"{label}: onnxruntime {ort.__version__}, {len(images)} images, "
          f"{len(list(folder.glob('*.onnx')))} files", flush=True)


# ---------------------------------------------------------------------------------------------------------
# The measuring side.


def cos_rel(reference: np.ndarray, candidate: np.ndarray) -> tuple[float, float, float]:
    dot = np.sum(reference * candidate, axis=1)
    norms = np.linalg.norm(reference, axis=1) * np.linalg.norm(candidate, axis=1)
    cosine = dot / np.maximum(norms, 1e-12)
    rel = np.linalg.norm(candidate - reference) / max(float(np.linalg.norm(reference)), 1e-12)
    return float(cosine.mean()), float(cosine.min()), float(rel)


def prepare_run(run: Path, folder: Path, schemes: list[str], data_dir: str) -> dict:
    """fp32 (latent outputs only) and one INT8 file per scheme of ``run``'s encoder in ``folder``, the held-out
    images, and what the downstream classifier needs (labels and fp32 features of the training split)."""
    import onnx

    from alitool.checkpoint import load_checkpoint
    from alitool.conditional import condition_of
    from alitool.contract.names import ENCODER_ONNX, EXPORT_DIR, FEATURES
    from alitool.data import load_dataset
    from alitool.export.onnx import cpu_session
    from alitool.export.pipeline import ExportOptions, export_checkpoint
    from alitool.export.quantize import _as_float, calibration_set, quantize_encoder, without_outputs

    checkpoint = run / "checkpoint.pt" if run.is_dir() else run
    cfg = load_checkpoint(checkpoint)["config"]
    if condition_of(cfg.model) is not None:
        raise SystemExit(f"{run}: a conditional model; this benchmark feeds images only")
    fp32 = checkpoint.parent / EXPORT_DIR / ENCODER_ONNX
    if not fp32.is_file():
        export_checkpoint(checkpoint, ExportOptions(exporter="torchscript"), log=lambda _: None)
    folder.mkdir(parents=True, exist_ok=True)
    onnx.save(without_outputs(onnx.load(str(fp32)), {FEATURES}), str(folder / f"{FP32}.onnx"))
    calibration, heldout = calibration_set(cfg, "", data_dir)
    for scheme in schemes:
        quantize_encoder(fp32, folder / f"{scheme}.onnx", calibration, scheme)
    np.save(folder / "heldout.npy", heldout.images)
    info = {"name": cfg.name, "calibration": calibration.source, "heldout": heldout.source, "labels": None}
    try:
        test, train = load_dataset(cfg, "test", data_dir), load_dataset(cfg, "train", data_dir)
    except Exception:  # no labelled test split: no downstream figure
        return info
    if test.y is None or train.y is None or "test split" not in heldout.source:
        return info
    session = cpu_session(folder / f"{FP32}.onnx")
    images = _as_float(train.x)
    train_z = np.concatenate([session.run(["z_mean"], {"images": images[i:i + 256]})[0]
                              for i in range(0, len(images), 256)])
    np.save(folder / "train_z.npy", train_z)
    np.save(folder / "train_y.npy", train.y)
    np.save(folder / "test_y.npy", test.y[:len(heldout.images)])
    info["labels"] = True
    return info


def run_target(folder: Path, target: str, cross_cpu: Path) -> str:
    """Run the eval mode of this file for ``target``; the reason it could not, or ""."""
    script = [str(Path(__file__).resolve()), "--eval", str(folder), "--label", target]
    if target == "native":
        command = [sys.executable, *script]
    elif not cross_cpu.is_file():
        return f"no cross-cpu tool at {cross_cpu}"
    elif target == "x86-avx2":
        command = [str(cross_cpu), "x86-avx2", sys.executable, *script]
    else:
        command = [str(cross_cpu), "aarch64", *script]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=3600)
    if result.returncode != 0:
        return (result.stderr.strip().splitlines() or [f"exit status {result.returncode}"])[-1][:200]
    print(f"  {result.stdout.strip()}", flush=True)
    return ""


def fidelity_table(folder: Path, info: dict, schemes: list[str], targets: list[str], skipped: dict) -> list[str]:
    classifier = None
    if info["labels"]:
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        classifier = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
        classifier.fit(np.load(folder / "train_z.npy"), np.load(folder / "train_y.npy"))
        test_y = np.load(folder / "test_y.npy")
    head = "| scheme | " + " | ".join(f"{t}: cos mean / min / rel. error" + (" / accuracy" if classifier else "")
                                    for t in targets) + " |"
    lines = [f"{info['name']}: {info['heldout']}; calibrated on {info['calibration']}"
             + ("; accuracy: logistic regression fitted on fp32 z_mean of the training split" if classifier else ""),
             "", head, "|---" * (len(targets) + 1) + "|"]
    for name in [FP32, *schemes]:
        cells = []
        for target in targets:
            if skipped.get(target):
                cells.append("skipped")
                continue
            reference = np.load(folder / target / f"{FP32}.npy")
            z = np.load(folder / target / f"{name}.npy")
            mean, low, rel = cos_rel(reference, z)
            cell = f"{mean:.4f} / {low:.4f} / {100 * rel:.2f}%"
            if classifier is not None:
                cell += f" / {100 * float((classifier.predict(z) == test_y).mean()):.1f}%"
            cells.append(cell)
        label = "fp32 (itself)" if name == FP32 else name
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return lines


# ---------------------------------------------------------------------------------------------------------
# Native speed.


def images_per_second(session, images: np.ndarray, batch: int, seconds: float, repeats: int) -> float:
    """Median over ``repeats`` timed loops of about ``seconds`` each, after one warm-up call."""
    feed = {"images": images[:batch]}
    session.run(["z_mean"], feed)
    rates = []
    for _ in range(repeats):
        done, start = 0, time.perf_counter()
        while True:
            session.run(["z_mean"], feed)
            done += batch
            elapsed = time.perf_counter() - start
            if elapsed >= seconds and done >= 3 * batch:
                break
        rates.append(done / elapsed)
    return statistics.median(rates)


def speed_table(label: str, folder: Path, schemes: list[str], threads: int, seconds: float,
                repeats: int) -> list[str]:
    import onnxruntime as ort

    images = np.load(folder / "heldout.npy")
    if len(images) < max(BATCHES):
        images = np.concatenate([images] * (max(BATCHES) // len(images) + 1))
    lines = [f"{label}: images/s, median of {repeats} x {seconds:g} s, {threads or 'default'} threads",
             "", "| file | " + " | ".join(f"batch {b}" for b in BATCHES) + " |", "|---" * (len(BATCHES) + 1) + "|"]
    for name in [FP32, *schemes]:
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.log_severity_level = 3
        session = ort.InferenceSession(str(folder / f"{name}.onnx"), options, providers=["CPUExecutionProvider"])
        rates = [images_per_second(session, images, b, seconds, repeats) for b in BATCHES]
        lines.append(f"| {name} | " + " | ".join(f"{r:,.0f}" for r in rates) + " |")
    return lines


def prepare_svhn(folder: Path, schemes: list[str]) -> None:
    """The SVHN architecture (configs/svhn.yaml) at random init, calibrated on random-uniform images: for speed
    only, since neither its weights nor its calibration say anything about fidelity."""
    import onnx
    import torch

    from alitool.config import load_config
    from alitool.contract.names import FEATURES
    from alitool.export.onnx import export_networks
    from alitool.export.quantize import ImageSet, quantize_encoder, without_outputs
    from alitool.models import ALI, data_shape
    from alitool.trained_networks import meta_from_config

    torch.manual_seed(0)
    cfg = load_config("svhn")
    model = ALI(cfg).eval()
    pair = export_networks(model.encoder, model.decoder, meta_from_config(cfg), folder / "export",
                           exporter="torchscript", log=lambda _: None)
    onnx.save(without_outputs(onnx.load(str(pair.encoder_path)), {FEATURES}), str(folder / f"{FP32}.onnx"))
    rng = np.random.default_rng(0)
    images = rng.uniform(0, 1, (512, *data_shape(cfg))).astype(np.float32)
    for scheme in schemes:
        quantize_encoder(pair.encoder_path, folder / f"{scheme}.onnx", ImageSet(images[:256], "random uniform"),
                         scheme)
    np.save(folder / "heldout.npy", images[256:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="*", type=Path, help="trained run folders (or checkpoints) to measure")
    parser.add_argument("--schemes", default="", help="comma-separated (default: all of export/quantize.py SCHEMES)")
    parser.add_argument("--targets", default=",".join(TARGETS), help=f"comma-separated of {', '.join(TARGETS)}")
    parser.add_argument("--svhn", action="store_true", help="also time the SVHN architecture at random init")
    parser.add_argument("--skip-speed", action="store_true")
    parser.add_argument("--skip-emulation", action="store_true", help="native fidelity only")
    parser.add_argument("--cross-cpu", type=Path, default=CROSS_CPU, help="the cross-cpu tool")
    parser.add_argument("--data-dir", default="")
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads for speed (0: ONNX Runtime's)")
    parser.add_argument("--seconds", type=float, default=2.0, help="length of one timed repeat")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--workdir", type=Path, default=None, help="keep the files here (default: a temp folder)")
    parser.add_argument("--eval", type=Path, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--label", default="native", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.eval is not None:  # the emulated (or native) side: numpy + onnxruntime only
        eval_folder(args.eval, args.label)
        return

    import onnxruntime

    from alitool.cpu_features import describe_int8_support
    from alitool.export.quantize import SCHEMES

    schemes = [s for s in args.schemes.split(",") if s] or list(SCHEMES)
    targets = ["native"] if args.skip_emulation else [t for t in args.targets.split(",") if t]
    print(f"CPU: {describe_int8_support()}; onnxruntime {onnxruntime.__version__} (native)")
    for scheme in schemes:
        print(f"  {SCHEMES[scheme].describe()}")
    with tempfile.TemporaryDirectory(prefix="int8-targets.") as tmp:
        work = args.workdir or Path(tmp)
        outputs: list[str] = []
        for run in args.runs:
            folder = work / run.resolve().name
            info = prepare_run(run, folder, schemes, args.data_dir)
            skipped = {}
            for target in targets:
                reason = run_target(folder, target, args.cross_cpu)
                if reason:
                    print(f"  {target}: skipped ({reason})", flush=True)
                skipped[target] = reason
            outputs += ["", *fidelity_table(folder, info, schemes, targets, skipped)]
            if not args.skip_speed:
                outputs += ["", *speed_table(f"{info['name']} (native)", folder, schemes, args.threads, args.seconds,
                                             args.repeats)]
        if args.svhn and not args.skip_speed:
            folder = work / "svhn-random-init"
            prepare_svhn(folder, schemes)
            outputs += ["", *speed_table("SVHN architecture, random init, calibrated on random-uniform images "
                                         "(speed only)", folder, schemes, args.threads, args.seconds, args.repeats)]
        print("\n".join(outputs))


if __name__ == "__main__":
    main()
