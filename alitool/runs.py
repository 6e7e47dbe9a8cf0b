"""Run folders: ``runs/<name>``, then ``runs/<name>-2``, ... and the one lookup that finds the newest of them.

Every "newest run" in the tool comes from ``newest_run``: ``train --resume`` (``trainers/resume.py``: the newest
run of one config), the RUN commands' default model (``default_model``), and the default of ``export`` and ``eval``.
"""

from __future__ import annotations

import re
from pathlib import Path

from alitool.contract.names import CHECKPOINT, ENCODER_ONNX, EXPORT_DIR, RUNS_ROOT
from alitool.errors import UserError

DEFAULT_ROOT = Path(RUNS_ROOT)
EXPORTED_ENCODER = f"{EXPORT_DIR}/{ENCODER_ONNX}"  # what makes a run folder hold an export, relative to it
# What makes a run folder hold TensorRT engines (``alitool export --trt``), relative to it.
EXPORTED_ENGINES = tuple(f"{EXPORT_DIR}/encoder{p}.engine" for p in ("", ".fp32", ".fp16", ".int8"))
NEWEST = "__newest__"  # ``--resume`` without a folder: the newest run of the config


def new_run_dir(name: str, root: Path = DEFAULT_ROOT) -> Path:
    """Create and return the first free ``root/name``, ``root/name-2``, ... folder (``mkdir`` is atomic, so two
    processes never get the same one). A root that cannot hold folders is one line (``alitool.outputs``)."""
    from alitool.outputs import check_destination

    check_destination(root, folder=True, what="run folder root")
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UserError(f"run folder root {root}: cannot create it ({err.strerror or err})") from None
    for i in range(1, 100000):
        path = root / (name if i == 1 else f"{name}-{i}")
        try:
            path.mkdir()
        except FileExistsError:
            continue
        except OSError as err:
            raise UserError(f"run folder {path}: cannot create it ({err.strerror or err})") from None
        return path
    raise UserError(f"{root}: no free run folder name for {name!r}")


def is_run_of(folder: str, name: str) -> bool:
    """Whether the run folder called ``folder`` belongs to the config ``name``: exactly the names ``new_run_dir``
    gives it, ``name`` and ``name-N``. So ``mixture25-paper`` is not a run of ``mixture25``."""
    return re.fullmatch(re.escape(name) + r"(-\d+)?", folder) is not None


def newest_run(root: Path = DEFAULT_ROOT, name: str | None = None, must_contain: str = CHECKPOINT) -> Path:
    """The run folder under ``root`` whose ``must_contain`` was modified last, among the runs of the config
    ``name`` (``is_run_of``) or, without a name, among all runs."""
    candidates = [p for p in root.iterdir() if p.is_dir() and (p / must_contain).is_file()] if root.is_dir() else []
    if name is not None:
        candidates = [p for p in candidates if is_run_of(p.name, name)]
    if not candidates:
        if name is not None:
            raise UserError(f"no {name} run ({name} or {name}-N) with a {must_contain} under {root}/; train one "
                            f"first: alitool train {name}")
        raise UserError(f"no run with a {must_contain} under {root}/; train one first: alitool train digits")
    # The folder name breaks a tie of modification times, so that the answer never depends on listing order.
    return max(candidates, key=lambda p: ((p / must_contain).stat().st_mtime, p.name))


def default_model(root: Path = DEFAULT_ROOT, backend: str = "auto") -> Path:
    """The model a RUN command (or ``alitool.load()``) opens without ``--model``, by ``--backend``:

    - ``torch``: the newest run with a checkpoint (``<run>``);
    - ``onnxruntime`` (``onnx``): the newest export (``<run>/export``, by its encoder.onnx);
    - ``tensorrt`` (``trt``): the newest export with a TensorRT encoder engine (``<run>/export``);
    - ``auto``: the newest export when ONNX Runtime is installed to run it, else the newest run with a
      checkpoint."""
    from alitool.backends import BACKEND_ALIASES

    kind = BACKEND_ALIASES.get(backend, backend)
    if kind == "torch":
        return newest_run(root)
    if kind == "onnxruntime":
        return _newest_export(root, (EXPORTED_ENCODER,), "alitool export")
    if kind == "tensorrt":
        return _newest_export(root, EXPORTED_ENGINES, "alitool export --trt")
    try:
        export = newest_run(root, must_contain=EXPORTED_ENCODER) / EXPORT_DIR
    except UserError:
        return newest_run(root)
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return newest_run(root)
    return export


def _newest_export(root: Path, files: tuple[str, ...], how: str) -> Path:
    """``<run>/export`` of the run whose newest file among ``files`` (paths relative to a run) is the newest."""
    found = []
    for name in files:
        try:
            run = newest_run(root, must_contain=name)
        except UserError:
            continue
        found.append(((run / name).stat().st_mtime, run.name, run))
    if not found:
        raise UserError(f"no run with {' or '.join(files)} under {root}/; make one first: {how}")
    return max(found)[2] / EXPORT_DIR


def resolve_model(model: str | Path | None, root: Path = DEFAULT_ROOT, backend: str = "auto") -> Path:
    """``--model`` as a path, or the default model for ``backend`` when it is not given."""
    return Path(model) if model else default_model(root, backend)


def run_checkpoint(run_or_file: str | Path) -> Path:
    """A run folder or a checkpoint file -> the checkpoint file."""
    path = Path(run_or_file)
    if path.is_dir():
        path = path / CHECKPOINT
    if not path.is_file():
        raise UserError(f"{path}: no checkpoint there")
    return path
