"""`alitool encode | reconstruct | interpolate | sample`: the RUN stage on image folders and video frames.

Every command takes the same ``--model`` (a run folder, checkpoint.pt, an .onnx file or export folder, or a
TensorRT .engine; default: the newest export under runs/, else the newest checkpoint) and prepares inputs
from the model's own metadata, as in training. Library code: ``alitool.pipeline`` and ``alitool.io``.
"""

from __future__ import annotations

import os
import signal
import sys
from contextlib import contextmanager
from pathlib import Path

import click

from alitool.commands import user_errors
from alitool.errors import UserError

BACKENDS = {"auto": "auto", "torch": "torch", "onnxruntime": "onnxruntime", "onnx": "onnxruntime",
            "tensorrt": "tensorrt", "trt": "tensorrt"}
DEFAULT_WORKERS = min(8, os.cpu_count() or 2)


def model_options(fn):
    """--model, --backend, --device: the same on every RUN command."""
    fn = click.option("--device", default="auto", show_default=True,
                      help="auto (CUDA when present), cpu, cuda, cuda:1 ...")(fn)
    fn = click.option("--backend", type=click.Choice(list(BACKENDS)), default="auto", show_default=True,
                      help="Inference runtime; auto picks it from the model file.")(fn)
    fn = click.option("--model", default=None, metavar="PATH",
                      help="Run folder, checkpoint .pt, .onnx file or export folder, or TensorRT .engine "
                           "(default: newest runs/*/export, else newest runs/*/checkpoint.pt).")(fn)
    return fn


def input_options(fn):
    """--batch-size, --workers, --stride: how inputs are read and batched."""
    fn = click.option("--stride", type=click.IntRange(min=1), default=1, show_default=True,
                      help="Keep every K-th video frame.")(fn)
    fn = click.option("--workers", type=click.IntRange(min=1), default=DEFAULT_WORKERS, show_default=True,
                      help="Threads that decode and resize inputs while the model runs.")(fn)
    fn = click.option("--batch-size", type=click.IntRange(min=1), default=64, show_default=True,
                      help="Images per model call (the last batch is padded to this size).")(fn)
    return fn


def default_model(root: Path | None = None) -> Path:
    """The newest export (runs/*/export/encoder.onnx, when ONNX Runtime is installed), else the newest run
    with a checkpoint."""
    from alitool.runs import DEFAULT_ROOT, newest_run

    root = DEFAULT_ROOT if root is None else root
    exports = list(root.glob("*/export/encoder.onnx")) if root.is_dir() else []
    if exports:
        try:
            import onnxruntime  # noqa: F401
        except ImportError:
            exports = []
    if exports:
        return max(exports, key=lambda p: p.stat().st_mtime).parent
    return newest_run(root)


def open_model(model: str | None, backend: str = "auto", device: str = "auto", need_decoder: str = ""):
    """Load ``model`` (or the default one) with one clear line for any file that is not a usable model."""
    from alitool.backends import load_backend
    from alitool.io.pictures import require_decoder

    path = Path(model) if model else default_model()
    try:
        loaded = load_backend(path, backend=BACKENDS[backend], device=device)
    except UserError:
        raise
    except ImportError as err:
        raise UserError(f"{path}: the {backend} backend needs the '{err.name}' package, which is not installed "
                        "(see alitool doctor)") from None
    except Exception as err:  # noqa: BLE001 - whatever a runtime says about a bad file, say it in one line
        reason = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
        raise UserError(f"{path}: not a usable model ({type(err).__name__}: {reason})") from None
    if need_decoder:
        require_decoder(loaded, path, need_decoder)
    click.echo(f"model: {path} ({loaded.name}, {loaded.meta.image_size}x{loaded.meta.image_size}x"
               f"{loaded.meta.channels}, latent {loaded.meta.latent_dim})", err=True)
    return loaded


@contextmanager
def interruptible(out: Path):
    """Ctrl-C and SIGTERM end the run with one line; the temporary outputs are removed on the way out, so
    ``out`` is either the previous file or the new complete one, never half of one."""

    def on_term(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, on_term)
    try:
        yield
    except KeyboardInterrupt:
        click.secho(f"interrupted: {out} was not written (a previous {out.name}, if any, is untouched)",
                    fg="yellow", err=True)
        sys.exit(130)
    finally:
        signal.signal(signal.SIGTERM, previous)


def _seed(seed: int | None, backend) -> None:
    """Make --features z reproducible: torch's generator for checkpoints, the backend's own NumPy generator
    for ONNX Runtime / TensorRT (which sample eps outside the graph)."""
    if seed is None:
        return
    import numpy as np
    import torch

    np.random.seed(seed)
    torch.manual_seed(seed)
    if isinstance(getattr(backend, "rng", None), np.random.Generator):
        backend.rng = np.random.default_rng(seed)


def _finish(report, strict: bool, wrote: str) -> None:
    click.echo(f"{report.summary()}; wrote {wrote}")
    if strict and (report.skipped or report.notices):
        click.secho(f"--strict: {len(report.skipped)} skipped and {len(report.notices)} damaged inputs "
                    "(the good rows were written)", fg="red", err=True)
        sys.exit(1)


@click.command()
@click.argument("sources", nargs=-1, required=True)
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Features file (.npy).")
@model_options
@input_options
@click.option("--features", type=click.Choice(["mean", "z", "paper"]), default="mean", show_default=True,
              help="mean: posterior mean z_mean; z: a sample of q(z|x); paper: the section 4.3 SVM features.")
@click.option("--seed", type=int, default=None, help="Seed for --features z.")
@click.option("--max-megapixels", type=float, default=64.0, show_default=True,
              help="Skip images larger than this (checked from the header, before decoding).")
@click.option("--full-jpeg-decode", is_flag=True,
              help="Decode large JPEGs at full size before resizing, exactly as the training datasets do (slower; "
                   "by default libjpeg decodes them at 1/2-1/8 scale when that leaves 2x the model's size).")
@click.option("--strict", is_flag=True, help="Exit with status 1 when any input was skipped.")
@click.option("--progress/--no-progress", default=True, help="Progress bar on stderr (only on a terminal).")
@user_errors
def encode(sources, out, model, backend, device, batch_size, workers, stride, features, seed, max_megapixels,
           full_jpeg_decode, strict, progress) -> None:
    """Encode images, folders, globs, .txt path lists and videos to a float32 [N, D] .npy.

    Next to OUT goes OUT's name with .index.csv (row, source, frame, time_s): row i of the .npy is row i of
    the index. Bad inputs are skipped with one warning line each.

    \b
    Examples:
      alitool encode photos/ --out feats.npy
      alitool encode "shots/**/*.jpg" list.txt clip.mp4 --stride 5 --out feats.npy --model runs/svhn
      alitool encode folder/ --out feats.npy --model runs/svhn/export/encoder.int8.onnx --features paper
    """
    from alitool.pipeline import encode_to_npy, index_path_for

    loaded = open_model(model, backend, device)
    _seed(seed, loaded)
    with interruptible(out):
        report = encode_to_npy(loaded, sources, out, kind=features, batch_size=batch_size, workers=workers,
                               stride=stride, max_pixels=int(max_megapixels * 1e6), progress=progress,
                               jpeg_draft=not full_jpeg_decode)
    _finish(report, strict, f"{out} [{report.rows}, {report.dim}] and {index_path_for(out)}")


@click.command()
@click.argument("sources", nargs=-1, required=True)
@click.option("--out", type=click.Path(path_type=Path), required=True,
              help="recon.png (a grid) or recon.mp4 / .avi (a side-by-side video).")
@model_options
@input_options
@click.option("--n", "n", type=click.IntRange(min=1), default=32, show_default=True,
              help="Inputs shown in a PNG grid (the first N).")
@click.option("--strict", is_flag=True, help="Exit with status 1 when any input was skipped.")
@user_errors
def reconstruct(sources, out, model, backend, device, batch_size, workers, stride, n, strict) -> None:
    """Originals and their reconstructions x -> z -> x (paper figures 2-5).

    A .png OUT is a grid with originals and reconstructions in alternating columns; a video OUT shows each
    frame (or image) beside its reconstruction.

    \b
    Examples:
      alitool reconstruct folder/ --out recon.png
      alitool reconstruct clip.mp4 --stride 2 --out recon.mp4 --model runs/digits
    """
    from alitool.io.pictures import check_picture_path, reconstruction_grid, reconstruction_video

    kind = check_picture_path(out, allow_video=True)
    loaded = open_model(model, backend, device, need_decoder="reconstruct")
    with interruptible(out):
        if kind == "png":
            report = reconstruction_grid(loaded, sources, out, n=n, batch_size=batch_size, workers=workers,
                                         stride=stride)
        else:
            report = reconstruction_video(loaded, sources, out, batch_size=batch_size, workers=workers,
                                          stride=stride)
    _finish(report, strict, str(out))


@click.command()
@click.argument("endpoints", nargs=-1, required=True)
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Picture file (.png).")
@model_options
@click.option("--steps", type=click.IntRange(min=2), default=8, show_default=True,
              help="Decoded points from z(A) to z(B), both ends included.")
@user_errors
def interpolate(endpoints, out, model, backend, device, steps) -> None:
    """Decode the straight line from z(A) to z(B) (paper figure 6); originals at both ends.

    A and B are images or video frames (clip.mp4@120 is frame 120); several pairs make one row each.

    \b
    Examples:
      alitool interpolate a.png b.png --out interp.png
      alitool interpolate clip.mp4@0 clip.mp4@120 x.png y.png --steps 10 --out interp.png
    """
    from alitool.io.pictures import check_picture_path, interpolation_grid

    check_picture_path(out)
    loaded = open_model(model, backend, device, need_decoder="interpolate")
    rows = interpolation_grid(loaded, list(endpoints), out, steps=steps)
    click.echo(f"{rows} interpolation row{'s' if rows != 1 else ''} of {steps + 2} images; wrote {out}")


@click.command()
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Picture file (.png).")
@model_options
@click.option("--n", "n", type=click.IntRange(min=1), default=64, show_default=True, help="Number of samples.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the prior draws z ~ N(0, I).")
@user_errors
def sample(out, model, backend, device, n, seed) -> None:
    """Decode N draws from the prior z ~ N(0, I) into a grid.

    \b
    Examples:
      alitool sample --out samples.png
      alitool sample --n 100 --seed 3 --model runs/svhn/export --out samples.png
    """
    from alitool.io.pictures import check_picture_path, sample_grid

    check_picture_path(out)
    loaded = open_model(model, backend, device, need_decoder="sample")
    sample_grid(loaded, out, n=n, seed=seed)
    click.echo(f"{n} samples (seed {seed}); wrote {out}")
