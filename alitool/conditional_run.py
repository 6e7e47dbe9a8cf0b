"""The RUN stage for conditional models (Dumoulin et al. 2017, section 4.4, Eq. 7, figure 7): y from the command
line or from a dataset's labels, with any backend (checkpoint, ONNX Runtime, TensorRT).

- ``fixed_condition``: the y of ``--class`` / ``--attrs``, checked against what the model says y means.
- ``ConditionedBackend`` / ``with_fixed_condition``: a conditional model with one y for every input, so the
  unconditional pipelines (encode, reconstruct, interpolate, sample) run it unchanged.
- ``condition_grid``: figure 7's layout: one fixed z per row, one y setting per column.
- ``dataset_reconstruction_grid`` / ``encode_dataset_to_npy``: a dataset split's images with their own labels
  (or attributes) as y, through the same fixed-size batches, PNG and .npy writers as the file pipelines.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from alitool.conditional import Condition, broadcast_rows, condition_of
from alitool.contract.meta import to_model_range, to_unit_range
from alitool.encoding.batching import padded_calls
from alitool.encoding.decoding import Record
from alitool.encoding.feature_files import FeatureFiles
from alitool.encoding.report import RunReport
from alitool.errors import UserError


def fixed_condition(backend, class_text: str | None, attrs_text: str | None) -> np.ndarray | None:
    """y [y_dim] from ``--class`` or ``--attrs``; None when neither is given. One line for an unconditional
    model given either, both given at once, an unknown class or attribute."""
    condition = condition_of(backend.meta)
    if condition is None:
        if class_text is not None or attrs_text is not None:
            flag = "--class" if class_text is not None else "--attrs"
            raise UserError(f"{flag}: model {backend.meta.name!r} is not conditional (trained without "
                            "--conditional); it takes no y")
        return None
    if class_text is not None and attrs_text is not None:
        raise UserError("give --class or --attrs, not both")
    if class_text is not None:
        return condition.one_hot([condition.parse_class(class_text)])[0]
    if attrs_text is not None:
        return condition.parse_attrs(attrs_text)
    return None


def with_fixed_condition(backend, class_text: str | None, attrs_text: str | None, command: str):
    """``backend`` with the y of ``--class`` / ``--attrs`` fixed for every input, the backend itself for an
    unconditional model, or one line naming the flag when a conditional model gets no y (``command``: the
    command that needs it)."""
    y = fixed_condition(backend, class_text, attrs_text)
    if y is not None:
        return ConditionedBackend(backend, y)
    condition = condition_of(backend.meta)
    if condition is not None:
        flag = "--class" if condition.kind == "class" else "--attrs"
        dataset = " or --dataset SPLIT" if command in ("encode", "reconstruct") else ""
        raise UserError(f"model {backend.meta.name!r} is conditional on {condition.describe()}; {command} needs "
                        f"{flag}{dataset}")
    return backend


def require_condition(backend) -> Condition:
    condition = condition_of(backend.meta)
    if condition is None:
        raise UserError(f"model {backend.meta.name!r} is not conditional (trained without --conditional)")
    return condition


class ConditionedBackend:
    """``backend`` with y fixed to one vector for every row of every call."""

    def __init__(self, backend, y: np.ndarray):
        self.backend, self.y = backend, np.asarray(y, dtype=np.float32)
        self.meta, self.name = backend.meta, backend.name
        self.draws_posterior_samples = backend.draws_posterior_samples

    def encode(self, images: np.ndarray, kind: str = "mean") -> np.ndarray:
        return self.backend.encode(images, kind=kind, y=broadcast_rows(self.y, len(images)))

    def decode(self, z: np.ndarray) -> np.ndarray:
        return self.backend.decode(z, y=broadcast_rows(self.y, len(z)))


def condition_grid(backend, out: str | Path, columns_y: np.ndarray, *, rows: int = 8, seed: int = 0,
                   batch_size: int = 64) -> None:
    """Figure 7: ``rows`` draws z ~ N(0, I), one per row, each decoded with every column's y; one PNG."""
    from alitool.viz import make_grid, save_png

    meta = backend.meta
    if rows < 1:
        raise UserError(f"--rows must be at least 1, not {rows}")
    if not meta.image_size:
        raise UserError(f"model {meta.name!r} generates {meta.channels}-D points, not images")
    columns = len(columns_y)
    z = np.random.default_rng(seed).standard_normal((rows, meta.latent_dim)).astype(np.float32)
    z_all = np.repeat(z, columns, axis=0)  # row-major: row r holds z_r in every column
    y_all = np.tile(np.asarray(columns_y, dtype=np.float32), (rows, 1))
    images = padded_calls(lambda zz, yy: backend.decode(zz, y=yy), (z_all, y_all), batch_size)
    save_png(out, make_grid(to_unit_range(images, meta.value_range), ncols=columns))


def _dataset_for(backend, split: str, data_dir: str):
    """(the model's own dataset split, its Condition): the training config travels in the model's metadata."""
    from alitool.install import require_training_stack

    require_training_stack(f"--dataset {split} (the model's own dataset, read as in training)")
    from alitool.config import from_dict
    from alitool.data import load_dataset

    condition = require_condition(backend)
    if not backend.meta.config:
        raise UserError(f"model {backend.meta.name!r} carries no training config; --dataset needs it")
    cfg = from_dict(backend.meta.config)
    return load_dataset(cfg, split, data_dir), condition


def dataset_reconstruction_grid(backend, split: str, out: str | Path, *, n: int = 32, data_dir: str = "",
                                y: np.ndarray | None = None, batch_size: int = 64, pairs_per_row: int = 8) -> int:
    """The first ``n`` images of the model's dataset split and their reconstructions with each image's own y
    (or the fixed ``y`` of --class / --attrs), in alternating columns as in paper figures 2-5. Returns n shown."""
    from alitool.viz import save_reconstruction_grid

    ds, condition = _dataset_for(backend, split, data_dir)
    count = min(n, len(ds))
    if count == 0:
        raise UserError(f"the {ds.name} {split} split is empty")
    vr = backend.meta.value_range
    x = to_model_range(ds.float_batch(slice(0, count)).numpy(), vr)
    ys = condition.rows(ds, slice(0, count)) if y is None else broadcast_rows(y, count)
    z = padded_calls(lambda xx, yy: backend.encode(xx, kind="mean", y=yy), (x, ys), batch_size)
    recon = padded_calls(lambda zz, yy: backend.decode(zz, y=yy), (z, ys), batch_size)
    save_reconstruction_grid(out, to_unit_range(x, vr), to_unit_range(recon, vr), pairs_per_row)
    return count


def encode_dataset_to_npy(backend, split: str, out: str | Path, *, kind: str = "mean", data_dir: str = "",
                          y: np.ndarray | None = None, batch_size: int = 64) -> RunReport:
    """Encode every image of the model's dataset split with its own y (or the fixed ``y``) into ``out`` (.npy)
    and its index CSV (source ``<dataset>:<split>:<row>``), both written atomically."""
    with FeatureFiles(out) as files:  # checks --out first; an error below removes its temporary files
        ds, condition = _dataset_for(backend, split, data_dir)
        if len(ds) == 0:
            raise UserError(f"the {ds.name} {split} split is empty; {out} was not written")
        report, start = RunReport(), time.perf_counter()
        for first in range(0, len(ds), batch_size):
            rows = slice(first, min(first + batch_size, len(ds)))
            x = to_model_range(ds.float_batch(rows).numpy(), backend.meta.value_range)
            ys = condition.rows(ds, rows) if y is None else broadcast_rows(y, len(x))
            feats = padded_calls(lambda xx, yy: backend.encode(xx, kind=kind, y=yy), (x, ys), batch_size)
            files.append(feats, [Record(f"{ds.name}:{split}:{i}") for i in range(rows.start, rows.stop)])
        files.commit(report)
    report.seconds = time.perf_counter() - start
    return report
