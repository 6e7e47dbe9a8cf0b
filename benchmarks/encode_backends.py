"""Encoder throughput of each backend on the paper's SVHN architecture (Appendix A, table 4), in one run.

Same model, same input images for every backend: PyTorch eager fp32, ONNX Runtime fp32, ONNX Runtime static INT8
(QDQ, per-channel) and, where a CUDA GPU and tensorrt exist, TensorRT engines; at batch 1, 64 and 256. Prints
images/s (wall clock), the ratio to eager, and the INT8 fidelity against fp32. SVHN itself is not needed: the
SVHN model is random-init (speed does not depend on the weights), and INT8 fidelity on real images is measured on
trained runs given with --fidelity-run (e.g. digits, Fashion-MNIST), calibrated on their training split and
measured on their test split.

    python benchmarks/encode_backends.py --fidelity-run runs/digits --fidelity-run runs/fashion-mnist
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from alitool.backends import load_backend
from alitool.config import load_config
from alitool.export.onnx import export_networks
from alitool.export.pipeline import ExportOptions, export_checkpoint
from alitool.export.quantize import ImageSet, measure_fidelity, quantize_encoder
from alitool.models import ALI, data_shape
from alitool.trained_networks import meta_from_config

BATCHES = (1, 64, 256)


def throughput(encode, images: np.ndarray, batch: int, seconds: float) -> tuple[float, float]:
    """(images per wall-clock second, images per CPU-second of this process) of ``encode`` on consecutive
    batches, after one warm-up call. The second is the steadier figure when other jobs share the cores."""
    encode(images[:batch])
    done, start, cpu_start = 0, time.perf_counter(), time.process_time()
    while True:
        offset = (done // batch * batch) % (len(images) - batch + 1)
        encode(images[offset : offset + batch])
        done += batch
        elapsed = time.perf_counter() - start
        if elapsed >= seconds and done >= 3 * batch:
            return done / elapsed, done / max(time.process_time() - cpu_start, 1e-9)


def svhn_speed(workdir: Path, seconds: float, threads: int) -> tuple[list[tuple[str, dict]], str]:
    torch.manual_seed(0)
    cfg = load_config("svhn")
    model = ALI(cfg).eval()
    from alitool.checkpoint import save_checkpoint

    run = workdir / "svhn"
    save_checkpoint(run / "checkpoint.pt", cfg=cfg, models={"encoder": model.encoder, "decoder": model.decoder})
    export_networks(model.encoder, model.decoder, meta_from_config(cfg), run / "export", exporter="torchscript",
                    log=lambda _: None)
    rng = np.random.default_rng(0)
    images = rng.uniform(0, 1, (1024, *data_shape(cfg))).astype(np.float32)
    # Calibration for the speed model: SVHN is not here and the weights are random, so any images will do.
    calibration = ImageSet(rng.uniform(0, 1, (256, *data_shape(cfg))).astype(np.float32), "uniform noise")
    quantize_encoder(run / "export" / "encoder.onnx", run / "export" / "encoder.int8.onnx", calibration)
    fidelity = measure_fidelity(run / "export" / "encoder.onnx", run / "export" / "encoder.int8.onnx",
                                ImageSet(images[:512], "uniform-noise inputs to the random-init SVHN model"))

    backends = [("PyTorch eager fp32", load_backend(run / "checkpoint.pt", device="cpu")),
                ("ONNX Runtime fp32", load_backend(run / "export" / "encoder.onnx", device="cpu", threads=threads)),
                ("ONNX Runtime INT8 (QDQ)", load_backend(run / "export" / "encoder.int8.onnx", device="cpu",
                                                         threads=threads))]
    if torch.cuda.is_available():
        try:
            from alitool.export.tensorrt import build_engine

            sources = {"fp32": "encoder.onnx", "fp16": "encoder.onnx", "int8": "encoder.int8.onnx"}
            for precision, source in sources.items():
                engine = run / "export" / f"encoder.{precision}.engine"
                build_engine(run / "export" / source, engine, precision, max(BATCHES), log=lambda _: None)
                backends.append((f"TensorRT {precision} (NumPy in/out)", load_backend(engine)))
        except Exception as err:  # report it and go on with the CPU rows
            print(f"TensorRT skipped: {err}", file=sys.stderr)
    for name, backend in backends:
        if hasattr(backend, "describe"):
            print(f"{name}: {backend.describe()}")
    table = []
    for name, backend in backends:
        table.append((name, {b: throughput(backend.encode, images, b, seconds) for b in BATCHES}))
    return table, fidelity.line()


def real_image_fidelity(run: Path, workdir: Path) -> str:
    """Export + INT8 a trained run into workdir, calibrated on its training split, measured on its test split."""
    out = workdir / f"fidelity-{run.name}"
    report = export_checkpoint(run, ExportOptions(out=out, int8=True, exporter="torchscript"), log=lambda _: None)
    return f"{run.name}: {report.fidelity.line()}"


def format_table(table: list[tuple[str, dict]], which: int) -> str:
    """Markdown table of rates (``which`` 0: per wall-clock second, 1: per CPU-second) and ratios to eager."""
    unit = ("img/s", "img/CPU-s")[which]
    eager = table[0][1]
    lines = ["| backend | " + " | ".join(f"batch {b}" for b in BATCHES) + " |",
             "|---|" + "---|" * len(BATCHES)]
    for name, speeds in table:
        cells = [f"{speeds[b][which]:,.0f} {unit} ({speeds[b][which] / eager[b][which]:.2f}x)" for b in BATCHES]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="timing per backend and batch size")
    parser.add_argument("--threads", type=int, default=0,
                        help="intra-op threads for PyTorch and ONNX Runtime alike (0: each library's default)")
    parser.add_argument("--fidelity-run", action="append", default=[], type=Path,
                        help="a trained run whose INT8 fidelity on real images to report (repeatable)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; torch {torch.__version__} "
          f"({torch.get_num_threads()} threads), onnxruntime threads: {args.threads or 'default'}; "
          f"load average before: {os.getloadavg()[0]:.2f}")
    with tempfile.TemporaryDirectory() as tmp:
        table, svhn_fidelity = svhn_speed(Path(tmp), args.seconds, args.threads)
        print("\nEncoder (images -> z_mean, z_log_sigma, features), SVHN architecture (table 4), 3x32x32 inputs:\n")
        print("images per second (wall clock), ratio to PyTorch eager:\n")
        print(format_table(table, 0))
        print("\nimages per CPU-second of the benchmark process (steadier when other jobs share the cores):\n")
        print(format_table(table, 1))
        print(f"\nSVHN architecture, {svhn_fidelity}")
        for run in args.fidelity_run:
            print(real_image_fidelity(run, Path(tmp)))
        if not args.fidelity_run:
            print("(no --fidelity-run given: INT8 fidelity on real images not measured)")
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
