"""`alitool encode | reconstruct | interpolate | sample`: the RUN stage on image folders and video frames.

Every command takes the same ``--model`` (a run folder, checkpoint.pt, an .onnx file or export folder, or a
TensorRT .engine; default: the newest export under runs/, else the newest checkpoint) and prepares inputs
from the model's own metadata, as in training. Library code: ``alitool.backends.opening`` (opening a model),
``alitool.runs`` (the default model), ``alitool.encoding`` and ``alitool.io``.

A conditional model (paper section 4.4) takes y from ``--class`` / ``--attrs`` (one y for every input), or, with
``--dataset SPLIT``, from the labels of its own dataset; ``sample --grid`` draws the paper's figure 7
(``alitool.conditional_run``).
"""

from __future__ import annotations

import os
import signal
import sys
from contextlib import contextmanager
from pathlib import Path

import click

from alitool.backends import BACKEND_CHOICES
from alitool.commands import user_errors
from alitool.commands.numbers import MAX_MEGAPIXELS, SEED, FiniteFloatRange, MemoryCount
from alitool.errors import UserError

DEFAULT_WORKERS = min(8, os.cpu_count() or 2)


def model_options(fn):
    """--model, --backend, --device: the same on every RUN command."""
    fn = click.option("--device", default="auto", show_default=True,
                      help="auto (CUDA when present), cpu, cuda, cuda:1 ...")(fn)
    fn = click.option("--backend", type=click.Choice(BACKEND_CHOICES), default="auto", show_default=True,
                      help="Inference runtime; auto picks it from the model file.")(fn)
    fn = click.option("--model", default=None, metavar="PATH",
                      help="Run folder, checkpoint .pt, .onnx file or export folder, or TensorRT .engine "
                           "(default: newest runs/*/export, else newest runs/*/checkpoint.pt; with --backend "
                           "torch the newest checkpoint, with onnx the newest export).")(fn)
    return fn


def condition_options(fn):
    """--class, --attrs: y for a conditional model (paper section 4.4)."""
    fn = click.option("--attrs", "attrs", default=None, metavar="A,B,...",
                      help="Conditional models on attributes: those switched on (the others are 0), e.g. "
                           "Male,Smiling,Eyeglasses.")(fn)
    fn = click.option("--class", "class_", default=None, metavar="N|NAME",
                      help="Conditional models on classes: the class, by index or name (e.g. 3 or Sneaker).")(fn)
    return fn


def dataset_options(fn):
    """--dataset, --data-dir: a conditional model's own dataset split, each image with its own y."""
    fn = click.option("--data-dir", default="", help="Where the model's dataset is (for --dataset).")(fn)
    fn = click.option("--dataset", "dataset_split", default=None, metavar="SPLIT",
                      help="Instead of SOURCES: the split (train, test, ...) of the model's own dataset, each image "
                           "with its own label or attributes as y (conditional models).")(fn)
    return fn


def input_options(fn):
    """--batch-size, --workers, --threads, --stride: how inputs are read and batched, and the model's threads."""
    fn = click.option("--stride", type=click.IntRange(min=1), default=1, show_default=True,
                      help="Keep every K-th video frame.")(fn)
    fn = click.option("--threads", type=click.IntRange(0, 4096), default=0,
                      help="CPU threads of the model (default: the cores this process may use, by affinity and cgroup "
                           "quota, less those other work is using now; said on stdout). On a busy machine 1 can "
                           "be much faster.")(fn)
    fn = click.option("--workers", type=click.IntRange(min=1), default=DEFAULT_WORKERS, show_default=True,
                      help="Threads that decode and resize inputs while the model runs.")(fn)
    fn = click.option("--batch-size", type=MemoryCount(min=1), default=64, show_default=True,
                      help="Images per model call (the last batch is padded to this size).")(fn)
    return fn


def _open_model(model: str | None, backend: str = "auto", device: str = "auto", need_decoder: str = "",
                threads: int = 0):
    """--model (or the default model for --backend, ``alitool.runs.default_model``) opened by the library, and its
    one "model: ..." line on stdout. ``threads`` > 0: the model's CPU threads (--threads)."""
    from alitool.backends.opening import describe_model, open_model
    from alitool.runs import resolve_model

    path = resolve_model(model, backend=backend)
    choice = _model_threads(threads, device)
    loaded = open_model(path, backend, device, need_decoder, threads=choice.threads if choice else 0)
    if choice and loaded.name == "torch":  # only a checkpoint needs torch; its thread count is process-wide
        import torch

        torch.set_num_threads(choice.threads)
    click.echo(describe_model(path, loaded))
    if choice and not threads:
        click.echo(f"model threads: {choice.reason}")
    return loaded


def _model_threads(threads: int, device: str):
    """The model's CPU threads (alitool/threads.py ``choose_inference_threads``): --threads N as given, else the
    free cores of this process's affinity mask and cgroup quota. None on an explicit GPU device, whose runtime
    keeps its own."""
    from alitool.threads import choose_inference_threads

    if device not in ("auto", "cpu") and not threads:
        return None
    return choose_inference_threads(threads)


def _claim_out(out: Path, inputs=(), also=()) -> None:
    """Before any work: ``--out`` checked (one line for a folder that cannot be written, an existing folder, an
    input) and locked against a second alitool writer until the command ends (``alitool.outputs``)."""
    from alitool.outputs import claim

    click.get_current_context().call_on_close(claim(out, inputs=inputs, also=also).release)


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

    np.random.seed(seed)
    if getattr(backend, "name", "") == "torch":  # only a checkpoint needs torch; ONNX / TensorRT runs never import it
        import torch

        torch.manual_seed(seed)
    if isinstance(getattr(backend, "rng", None), np.random.Generator):
        backend.rng = np.random.default_rng(seed)


def _sources_or_dataset(sources, dataset_split) -> None:
    if sources and dataset_split:
        raise UserError("give SOURCES or --dataset SPLIT, not both")
    if not sources and not dataset_split:
        raise UserError("nothing to read: give images, folders, globs, .txt lists or videos (or --dataset SPLIT "
                        "for a conditional model's own dataset)")


# Why: a user study's classifier on the default z_mean scored below the raw pixels, where --features paper scored
# above them; the measured table is in docs/encode.md (benchmarks/feature_choice.py reproduces it).
DEFAULT_FEATURES_NOTE = ("note: wrote z_mean, the posterior mean (the default --features mean); for a linear "
                         "classifier or retrieval --features paper measured better (section 4.3 features; not in "
                         "INT8 files): docs/encode.md, \"Which features to use\". Give --features to silence this.")


def _note_default_features() -> None:
    """One stderr line when --features was left at its default: z_mean is what most users get, and it is not the
    best input for the classifier they usually want it for (paper section 4.3 uses the wider vector)."""
    from click.core import ParameterSource

    if click.get_current_context().get_parameter_source("features") is ParameterSource.DEFAULT:
        click.echo(DEFAULT_FEATURES_NOTE, err=True)


def _finish(report, strict: bool, wrote: str) -> None:
    click.echo(f"{report.summary()}; wrote {wrote}")
    if strict and (report.skipped or report.notices):
        click.secho(f"--strict: {len(report.skipped)} skipped and {len(report.notices)} damaged inputs "
                    "(the good rows were written)", fg="red", err=True)
        sys.exit(1)


@click.command()
@click.argument("sources", nargs=-1)
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Features file (.npy).")
@model_options
@input_options
@condition_options
@dataset_options
@click.option("--features", type=click.Choice(["mean", "z", "paper"]), default="mean", show_default=True,
              help="mean: posterior mean z_mean (latent_dim wide; a compact code, not the best classifier "
                   "input); z: a sample of q(z|x); paper: the section 4.3 SVM features, which measured better "
                   "for a linear classifier or retrieval (docs/encode.md, \"Which features to use\"; not in INT8 "
                   "files).")
@click.option("--seed", type=SEED, default=None, help="Seed for --features z.")
@click.option("--max-megapixels", type=FiniteFloatRange(0.001, MAX_MEGAPIXELS), default=64.0, show_default=True,
              help="Skip images larger than this (checked from the header, before decoding).")
@click.option("--full-jpeg-decode", is_flag=True,
              help="Decode large JPEGs at full size before resizing (slower). By default, as in training and INT8 "
                   "calibration, libjpeg decodes them at 1/2-1/8 scale when that still leaves 2x the model's size.")
@click.option("--strict", is_flag=True, help="Exit with status 1 when any input was skipped.")
@click.option("--progress/--no-progress", default=True, help="Progress bar on stderr (only on a terminal).")
@user_errors
def encode(sources, out, model, backend, device, batch_size, workers, threads, stride, class_, attrs, dataset_split,
           data_dir, features, seed, max_megapixels, full_jpeg_decode, strict, progress) -> None:
    """Encode images, folders, globs, .txt path lists and videos to a float32 [N, D] .npy.

    Next to OUT goes OUT's name with .index.csv (row, source, frame, time_s): row i of the .npy is row i of
    the index. Bad inputs are skipped with one warning line each.

    The default features are z_mean, the posterior mean. To train a linear classifier or search by similarity,
    use --features paper (paper section 4.3): on digits and Fashion-MNIST it measured better than z_mean and
    than the raw pixels (docs/encode.md, "Which features to use"). Without --features a note on stderr says so.

    \b
    Examples:
      alitool encode photos/ --out feats.npy
      alitool encode "shots/**/*.jpg" list.txt clip.mp4 --stride 5 --out feats.npy --model runs/svhn
      alitool encode folder/ --out feats.npy --model runs/svhn/export/encoder.int8.onnx   # INT8: z only
      alitool encode folder/ --out paper.npy --model runs/svhn/export --features paper
      alitool encode --dataset test --out feats.npy --model runs/digits-cond   # conditional: labels as y
      alitool encode photos/ --attrs Male,Smiling --out feats.npy --model runs/celeba
    """
    from alitool.encoding.encode import encode_to_npy
    from alitool.encoding.feature_files import check_features_path, index_path_for

    _sources_or_dataset(sources, dataset_split)
    _claim_out(check_features_path(out), sources, also=[index_path_for(out)])
    loaded = _open_model(model, backend, device, threads=threads)
    _seed(seed, loaded)
    if dataset_split:
        from alitool.conditional_run import encode_dataset_to_npy, fixed_condition

        with interruptible(out):
            report = encode_dataset_to_npy(loaded, dataset_split, out, kind=features, data_dir=data_dir,
                                           y=fixed_condition(loaded, class_, attrs), batch_size=batch_size)
        _note_default_features()
        _finish(report, strict, f"{out} [{report.rows}, {report.dim}] and {index_path_for(out)}")
        return
    from alitool.conditional_run import with_fixed_condition

    loaded = with_fixed_condition(loaded, class_, attrs, "encode")
    with interruptible(out):
        report = encode_to_npy(loaded, sources, out, kind=features, batch_size=batch_size, workers=workers,
                               stride=stride, max_pixels=int(max_megapixels * 1e6), progress=progress,
                               jpeg_draft=not full_jpeg_decode)
    _note_default_features()
    _finish(report, strict, f"{out} [{report.rows}, {report.dim}] and {index_path_for(out)}")


@click.command()
@click.argument("sources", nargs=-1)
@click.option("--out", type=click.Path(path_type=Path), required=True,
              help="recon.png (a grid) or recon.mp4 / .avi (a side-by-side video).")
@model_options
@input_options
@condition_options
@dataset_options
@click.option("--n", "n", type=MemoryCount(min=1), default=32, show_default=True,
              help="Inputs shown in a PNG grid (the first N).")
@click.option("--posterior", type=click.Choice(["mean", "sample"]), default="mean", show_default=True,
              help="The z each reconstruction decodes. mean: mu(x), the posterior mean: deterministic, the same "
                   "picture every run, the encoder's best guess, which is what a reconstruction is usually wanted "
                   "for. sample: z drawn from q(z|x) (mu + sigma * eps), as in the paper's figures 2-5; --seed "
                   "makes it reproducible. A deterministic encoder gives the same picture either way.")
@click.option("--seed", type=SEED, default=None,
              help="Seed of the eps draws of --posterior sample (default: fresh draws every run).")
@click.option("--strict", is_flag=True, help="Exit with status 1 when any input was skipped.")
@user_errors
def reconstruct(sources, out, model, backend, device, batch_size, workers, threads, stride, class_, attrs,
                dataset_split, data_dir, n, posterior, seed, strict) -> None:
    """Originals and their reconstructions x -> z -> x (paper figures 2-5).

    A .png OUT is a grid with originals and reconstructions in alternating columns, under a caption that says
    which z they decode (--posterior); a video OUT shows each frame (or image) beside its reconstruction.

    \b
    Examples:
      alitool reconstruct folder/ --out recon.png
      alitool reconstruct folder/ --posterior sample --seed 1 --out recon-sample.png   # as the paper's figures
      alitool reconstruct clip.mp4 --stride 2 --out recon.mp4 --model runs/digits
      alitool reconstruct --dataset test --out recon.png --model runs/digits-cond   # conditional: labels as y
      alitool reconstruct --dataset test --class 3 --out as3.png --model runs/digits-cond
    """
    from alitool.io.pictures import check_picture_path, reconstruction_grid, reconstruction_video
    from alitool.viz import posterior_caption

    _sources_or_dataset(sources, dataset_split)
    if seed is not None and posterior != "sample":
        raise UserError("--seed seeds the draws of --posterior sample; the posterior mean draws nothing")
    if dataset_split and posterior == "sample":
        raise UserError("--dataset reconstructs from the posterior mean only; for posterior samples, give the "
                        "images as SOURCES")
    kind = check_picture_path(out, allow_video=not dataset_split)
    _claim_out(out, sources)
    loaded = _open_model(model, backend, device, need_decoder="reconstruct", threads=threads)
    _seed(seed, loaded)  # the same seeding as encode --features z: torch's generator or the backend's own
    if dataset_split:
        from alitool.conditional_run import dataset_reconstruction_grid, fixed_condition

        shown = dataset_reconstruction_grid(loaded, dataset_split, out, n=n, data_dir=data_dir,
                                            y=fixed_condition(loaded, class_, attrs), batch_size=batch_size)
        click.echo(f"{shown} images of the {dataset_split} split and their reconstructions; wrote {out}")
        return
    from alitool.conditional_run import with_fixed_condition

    loaded = with_fixed_condition(loaded, class_, attrs, "reconstruct")
    # The backend says whether its "z" draws anything: the config alone cannot (the torch backend draws the noise
    # of an encoder with noise inputs; its ONNX export computes G_z(x, 0)).
    caption = posterior_caption(posterior, seed, deterministic=not loaded.draws_posterior_samples)
    with interruptible(out):
        if kind == "png":
            report = reconstruction_grid(loaded, sources, out, n=n, batch_size=batch_size, workers=workers,
                                         stride=stride, posterior=posterior, caption=caption)
        else:
            report = reconstruction_video(loaded, sources, out, batch_size=batch_size, workers=workers,
                                          stride=stride, posterior=posterior)
    _finish(report, strict, f"{out} ({caption})")


@click.command()
@click.argument("endpoints", nargs=-1, required=True)
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Picture file (.png).")
@model_options
@click.option("--steps", type=MemoryCount(min=2), default=8, show_default=True,
              help="Decoded points from z(A) to z(B), both ends included.")
@condition_options
@user_errors
def interpolate(endpoints, out, model, backend, device, steps, class_, attrs) -> None:
    """Decode the straight line from z(A) to z(B) (paper figure 6); originals at both ends.

    A and B are images or video frames (clip.mp4@120 is frame 120); several pairs make one row each.

    \b
    Examples:
      alitool interpolate a.png b.png --out interp.png
      alitool interpolate clip.mp4@0 clip.mp4@120 x.png y.png --steps 10 --out interp.png
      alitool interpolate a.png b.png --class 7 --out interp.png --model runs/digits-cond
    """
    from alitool.conditional_run import with_fixed_condition
    from alitool.io.pictures import check_picture_path, interpolation_grid

    check_picture_path(out)
    _claim_out(out, endpoints)
    loaded = with_fixed_condition(_open_model(model, backend, device, need_decoder="interpolate"), class_, attrs,
                                  "interpolate")
    rows = interpolation_grid(loaded, list(endpoints), out, steps=steps)
    click.echo(f"{rows} interpolation row{'s' if rows != 1 else ''} of {steps + 2} images; wrote {out}")


@click.command()
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Picture file (.png).")
@model_options
@click.option("--n", "n", type=MemoryCount(min=1), default=64, show_default=True, help="Number of samples.")
@click.option("--seed", type=SEED, default=0, show_default=True, help="Seed of the prior draws z ~ N(0, I).")
@condition_options
@click.option("--grid", "grid", default=None, metavar="COLUMNS",
              help="Conditional models, figure 7: one fixed z per row, one y per column. Classes: 'all' or a list "
                   "(0,3,7). Attributes: 'A,B,C' (columns: none, A, B, C) or 'A;B,C;D' (each column's set); "
                   "--attrs is switched on in every column.")
@click.option("--rows", type=MemoryCount(min=1), default=8, show_default=True, help="Rows (z draws) of --grid.")
@user_errors
def sample(out, model, backend, device, n, seed, class_, attrs, grid, rows) -> None:
    """Decode N draws from the prior z ~ N(0, I) into a grid.

    A conditional model (section 4.4) decodes them with the y of --class or --attrs; --grid draws the paper's
    figure 7 instead (rows: z, columns: classes or attribute settings). A class-conditional model given
    neither draws the grid of all its classes.

    \b
    Examples:
      alitool sample --out samples.png
      alitool sample --n 100 --seed 3 --model runs/svhn/export --out samples.png
      alitool sample --class 3 --out threes.png --model runs/digits-cond
      alitool sample --attrs "Male,Smiling,Eyeglasses" --out faces.png --model runs/celeba
      alitool sample --grid "Black_Hair;Blond_Hair;Blond_Hair,Bangs" --attrs Male --out grid.png --model runs/celeba
    """
    from alitool.conditional import condition_of
    from alitool.conditional_run import condition_grid, fixed_condition, with_fixed_condition
    from alitool.io.pictures import check_picture_path, sample_grid

    check_picture_path(out)
    _claim_out(out)
    loaded = _open_model(model, backend, device, need_decoder="sample")
    condition = condition_of(loaded.meta)
    if grid is None and condition is not None and condition.kind == "class" and class_ is None and attrs is None:
        grid = "all"  # nothing picked: show every class
    if grid is not None:
        if condition is None:
            raise UserError(f"--grid: model {loaded.meta.name!r} is not conditional (trained without --conditional)")
        if class_ is not None:
            raise UserError("--grid puts the classes in columns; leave out --class")
        titles, columns_y = condition.grid_columns(grid, fixed_condition(loaded, None, attrs))
        condition_grid(loaded, out, columns_y, rows=rows, seed=seed)
        click.echo(f"{rows} rows (z, seed {seed}) x {len(titles)} columns: {' | '.join(titles)}; wrote {out}")
        return
    sample_grid(with_fixed_condition(loaded, class_, attrs, "sample"), out, n=n, seed=seed)
    click.echo(f"{n} samples (seed {seed}); wrote {out}")
