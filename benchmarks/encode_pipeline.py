"""Benchmark: `alitool encode` end to end against the backend alone, measured in one run.

Inputs (generated once under --workdir and reused; they sit in the page cache when measured):
- small: 20,000 32x32 PNGs (SVHN-sized);
- large: 1,000 640x480 JPEGs;
- video: a 640x480 MPEG-4 video of 2,000 frames.
Model: the paper's SVHN architecture (Appendix A, table 4), random init (speed does not depend on training),
as a PyTorch checkpoint and, when the export package is present, ONNX fp32 and static INT8 (QDQ) files.

Three rates per case, in images per second:
- backend only: ``backend.encode`` on batches already in memory: the ceiling for end to end (measured right
  before and after each end-to-end run, and averaged, so that both see the same load from other jobs);
- decode only: the pipeline (walk, read, decode, resize, batch) with no model, with W worker threads;
- end to end: ``encode_to_npy`` (sources -> .npy + index CSV), with W worker threads.
Target: small PNGs end to end at >= 80% of backend only with the INT8 backend (the pipeline should hide
file decoding behind the fastest model).

    python benchmarks/encode_pipeline.py                 # full sizes, a few minutes on 2 cores
    python benchmarks/encode_pipeline.py --quick         # 2,000 / 100 / 200 inputs, a smoke run
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

from alitool.errors import one_line


def loadavg() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


# ---------------------------------------------------------------------------------------------------------
# Inputs


def _texture(rng: np.random.Generator, side: int = 1536) -> np.ndarray:
    """A smooth colour field with shapes and mild noise: compresses like photographs, not like white noise."""
    base = cv2.resize(rng.integers(0, 256, (24, 24, 3), dtype=np.uint8), (side, side), interpolation=cv2.INTER_CUBIC)
    for _ in range(400):
        centre = tuple(int(v) for v in rng.integers(0, side, 2))
        colour = tuple(int(v) for v in rng.integers(0, 256, 3))
        if rng.random() < 0.5:
            cv2.circle(base, centre, int(rng.integers(5, 60)), colour, -1, cv2.LINE_AA)
        else:
            cv2.putText(base, str(int(rng.integers(0, 10))), centre, cv2.FONT_HERSHEY_SIMPLEX,
                        float(rng.uniform(1, 4)), colour, int(rng.integers(2, 8)), cv2.LINE_AA)
    noise = rng.normal(0, 6, base.shape)
    return np.clip(base + noise, 0, 255).astype(np.uint8)


def make_inputs(workdir: Path, n_small: int, n_large: int, n_frames: int) -> dict[str, Path]:
    rng = np.random.default_rng(0)
    texture = None
    paths = {"small": workdir / f"png32_{n_small}", "large": workdir / f"jpeg640_{n_large}",
             "video": workdir / f"video640_{n_frames}.mp4"}
    if not (paths["small"] / ".done").exists():
        texture = _texture(rng)
        paths["small"].mkdir(parents=True, exist_ok=True)
        for i in range(n_small):
            sub = paths["small"] / f"{i // 1000:03d}"  # 1,000 files per folder, as datasets are usually laid out
            sub.mkdir(exist_ok=True)
            y, x = rng.integers(0, texture.shape[0] - 96, 2)
            crop = cv2.resize(texture[y : y + 96, x : x + 96], (32, 32), interpolation=cv2.INTER_AREA)
            cv2.imwrite(str(sub / f"{i:06d}.png"), crop)
        (paths["small"] / ".done").touch()
    if not (paths["large"] / ".done").exists():
        texture = _texture(rng) if texture is None else texture
        paths["large"].mkdir(parents=True, exist_ok=True)
        for i in range(n_large):
            y, x = rng.integers(0, texture.shape[0] - 480), rng.integers(0, texture.shape[1] - 640)
            cv2.imwrite(str(paths["large"] / f"{i:05d}.jpg"), texture[y : y + 480, x : x + 640],
                        [cv2.IMWRITE_JPEG_QUALITY, 90])
        (paths["large"] / ".done").touch()
    if not paths["video"].exists():
        texture = _texture(rng) if texture is None else texture
        tmp = paths["video"].with_name(".tmp." + paths["video"].name)
        writer = cv2.VideoWriter(str(tmp), cv2.VideoWriter_fourcc(*"mp4v"), 30, (640, 480))
        for i in range(n_frames):  # a slow pan across the texture
            x, y = (i * 3) % (texture.shape[1] - 640), (i * 2) % (texture.shape[0] - 480)
            writer.write(texture[y : y + 480, x : x + 640])
        writer.release()
        os.replace(tmp, paths["video"])
    return paths


# ---------------------------------------------------------------------------------------------------------
# Models


def make_models(workdir: Path, calib_folder: Path) -> tuple[dict[str, Path], list[str]]:
    """{label: model path} for torch, and ONNX fp32 / INT8 when the export package can make them."""
    import torch

    from alitool.checkpoint import save_checkpoint
    from alitool.config import load_config
    from alitool.models import ALI
    from alitool.trained_networks import meta_from_config

    notes = []
    folder = workdir / "svhn_model"
    checkpoint = folder / "checkpoint.pt"
    cfg = load_config("svhn")
    torch.manual_seed(0)
    ali = ALI(cfg).eval()
    if not checkpoint.exists():
        save_checkpoint(checkpoint, cfg=cfg, models={"encoder": ali.encoder, "decoder": ali.decoder})
    models = {"torch fp32": checkpoint}
    export_dir = folder / "export"
    try:
        from alitool.export.onnx import export_networks

        if not (export_dir / "encoder.onnx").exists():
            export_networks(ali.encoder, ali.decoder, meta_from_config(cfg), export_dir, log=lambda m: None)
        models["onnxruntime fp32"] = export_dir / "encoder.onnx"
    except Exception as err:  # noqa: BLE001 - a benchmark reports what it could not measure
        notes.append(f"ONNX fp32 not measured: {type(err).__name__}: {one_line(err)}")
        return models, notes
    try:
        from alitool.contract.preprocess import Preprocess, load_image
        from alitool.export.quantize import ImageSet, quantize_encoder

        if not (export_dir / "encoder.int8.onnx").exists():
            files = sorted(calib_folder.rglob("*.png"))[:256]
            pre = Preprocess(32, 3)
            calib = np.stack([load_image(f, pre) for f in files])
            quantize_encoder(export_dir / "encoder.onnx", export_dir / "encoder.int8.onnx",
                             ImageSet(calib, f"{len(files)} benchmark PNGs"))
        models["onnxruntime int8"] = export_dir / "encoder.int8.onnx"
    except Exception as err:  # noqa: BLE001
        notes.append(f"ONNX INT8 not measured: {type(err).__name__}: {one_line(err)}")
    return models, notes


# ---------------------------------------------------------------------------------------------------------
# Measurements


def backend_only(backend, batch_size: int, seconds: float) -> tuple[float, float]:
    """(images per second, CPU milliseconds per image over all threads) of ``backend.encode`` on in-memory
    batches, after one warm-up batch."""
    x = np.random.default_rng(0).random((batch_size, *backend.meta.input_shape), dtype=np.float32)
    backend.encode(x)
    done, start, cpu = 0, time.perf_counter(), time.process_time()
    while time.perf_counter() - start < seconds:
        backend.encode(x)
        done += batch_size
    return done / (time.perf_counter() - start), (time.process_time() - cpu) * 1e3 / done


def decode_only(source: Path, batch_size: int, workers: int) -> tuple[float, float]:
    """(images per second, CPU milliseconds per image) of the pipeline without a model."""
    from alitool.contract.preprocess import Preprocess
    from alitool.encoding.batching import batches
    from alitool.encoding.decoding import decode_stream
    from alitool.io.sources import expand_sources

    pre = Preprocess(32, 3)
    start, cpu, rows = time.perf_counter(), time.process_time(), 0
    for batch in batches(decode_stream(expand_sources([str(source)]), pre, workers), pre, batch_size):
        rows += batch.count
    return rows / (time.perf_counter() - start), (time.process_time() - cpu) * 1e3 / rows


def end_to_end(backend, source: Path, out: Path, batch_size: int, workers: int) -> float:
    from alitool.encoding.encode import encode_to_npy

    report = encode_to_npy(backend, [str(source)], out, batch_size=batch_size, workers=workers, progress=False)
    if report.skipped:
        raise RuntimeError(f"{len(report.skipped)} inputs skipped in the benchmark: {report.skipped[:3]}")
    return report.rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "alitool-encode-bench")
    parser.add_argument("--quick", action="store_true", help="10x fewer inputs (smoke run)")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--workers", default="1,2,4", help="worker counts to compare")
    parser.add_argument("--seconds", type=float, default=4.0, help="time per backend-only measurement")
    parser.add_argument("--cases", default="small,large,video", help="which inputs to measure")
    args = parser.parse_args()
    cases = [c for c in ("small", "large", "video") if c in args.cases.split(",")]
    scale = 10 if args.quick else 1
    workers = [int(w) for w in args.workers.split(",")]
    args.workdir.mkdir(parents=True, exist_ok=True)

    print(f"# encode pipeline benchmark: {platform.node()}, {os.cpu_count()} CPUs, python {sys.version.split()[0]}, "
          f"OpenCV {cv2.__version__}, load average before: {loadavg()}", flush=True)
    t0 = time.perf_counter()
    inputs = make_inputs(args.workdir, 20000 // scale, 1000 // scale, 2000 // scale)
    print(f"inputs ready in {time.perf_counter() - t0:.0f} s under {args.workdir}", flush=True)
    models, notes = make_models(args.workdir, inputs["small"])

    from alitool.backends import load_backend

    backends = {label: load_backend(path, device="cpu") for label, path in models.items()}
    # The target is stated for the INT8 backend; without it, the fastest one.
    fastest = "onnxruntime int8" if "onnxruntime int8" in backends else max(
        backends, key=lambda label: backend_only(backends[label], args.batch_size, 1.0)[0])
    out = args.workdir / "feats.npy"
    counts = {"small": 20000 // scale, "large": 1000 // scale, "video": 2000 // scale}
    names = {"small": f"{counts['small']:,} PNGs 32x32", "large": f"{counts['large']:,} JPEGs 640x480",
             "video": f"video 640x480, {counts['video']:,} frames"}
    # Every backend on the small PNGs with the middle worker count; the fastest backend with every count.
    middle = workers[len(workers) // 2]
    plan = [("small", label, middle) for label in backends] if "small" in cases else []
    plan += [("small", fastest, w) for w in workers if w != middle and "small" in cases]
    plan += [(case, fastest, w) for case in ("large", "video") if case in cases for w in workers]
    decoded: dict[tuple[str, int], tuple[float, float]] = {}
    rows = []
    for case, label, w in plan:
        if (case, w) not in decoded:
            decoded[case, w] = decode_only(inputs[case], args.batch_size, w)
        decode_rate, decode_cpu = decoded[case, w]
        # The backend-only rate is measured right before and right after each end-to-end run, so that both see
        # the same machine load (other jobs share these cores); their mean is the reference.
        before, model_cpu = backend_only(backends[label], args.batch_size, args.seconds)
        e2e = end_to_end(backends[label], inputs[case], out, args.batch_size, w)
        after, _ = backend_only(backends[label], args.batch_size, args.seconds)
        rows.append((names[case], label, w, decode_rate, (before + after) / 2, e2e, decode_cpu, model_cpu))
        print(f"  {names[case]:<28} {label:<17} W={w}: decode {decode_rate:6.0f}  backend {before:6.0f} / {after:6.0f}"
              f"  end to end {e2e:6.0f} img/s; CPU ms/img decode {decode_cpu:.3f} model {model_cpu:.3f} "
              f"(load {loadavg()})", flush=True)

    print(f"\nbatch size {args.batch_size}; load average after: {loadavg()}\n")
    print("| input | backend | workers | decode only (img/s) | backend only (img/s) | end to end (img/s) | "
          "end to end / backend | CPU ms/img: decode, model |")
    print("|---|---|---|---|---|---|---|---|")
    for name, label, w, dec, mod, e2e, dcpu, mcpu in rows:
        print(f"| {name} | {label} | {w} | {dec:,.0f} | {mod:,.0f} | {e2e:,.0f} | {e2e / mod:.0%} | "
              f"{dcpu:.3f}, {mcpu:.3f} |")
    for note in notes:
        print(f"\nnote: {note}")


if __name__ == "__main__":
    main()
