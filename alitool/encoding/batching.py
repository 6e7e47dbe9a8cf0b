"""Fixed-size model batches for the encoder G_z(x) and decoder G_x(z) (Dumoulin et al. 2017, section 2).

Every model call of the running side has one batch size, the last batch zero-padded: static-shape engines
(TensorRT profiles, ONNX Runtime's tuned kernels) see one shape only. ``batches`` groups decoded samples that
way; ``padded_calls`` does the same for arrays already in memory; ``call_model`` turns a backend's runtime error
into one line.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import numpy as np

from alitool.contract.meta import to_model_range
from alitool.contract.preprocess import Preprocess
from alitool.encoding.decoding import Notice, Record, Sample, SampleRun
from alitool.errors import UserError, one_line
from alitool.io.sources import Skipped


@dataclass
class Batch:
    images: np.ndarray  # float32 [batch_size, C, S, S] in the model's value range; rows >= count are padding
    count: int
    records: list[Record]


def batches(stream: Iterable[SampleRun | Sample | Skipped | Notice], pre: Preprocess, batch_size: int,
            value_range: tuple[float, float] = (0.0, 1.0), on_skip: Callable[[Skipped], None] = lambda s: None,
            on_notice: Callable[[Notice], None] = lambda n: None, limit: int = 0) -> Iterator[Batch]:
    """Group samples into fixed-size batches (the last one zero-padded) mapped to the model's value range;
    skipped inputs and notices go to the callbacks as they pass. ``limit`` > 0 stops after that many rows.
    Runs of samples (``decode_runs``) are copied a slice at a time."""
    if batch_size < 1:
        raise UserError(f"--batch-size must be at least 1, not {batch_size}")
    batch = _Filling(batch_size, pre)
    total = 0
    for item in stream:
        if isinstance(item, Skipped):
            on_skip(item)
            continue
        if isinstance(item, Notice):
            on_notice(item)
            continue
        run = item if isinstance(item, SampleRun) else SampleRun(item.image[None], [item.record])
        offset = 0
        while offset < len(run.records):
            room = batch_size - batch.count if not limit else min(batch_size - batch.count, limit - total)
            taken = batch.add(run, offset, room)
            offset += taken
            total += taken
            if batch.count == batch_size or total == limit:
                yield batch.finish(value_range)
                if total == limit:
                    return
                batch = _Filling(batch_size, pre)
    if batch.count:
        yield batch.finish(value_range)


class _Filling:
    """One batch being filled."""

    def __init__(self, batch_size: int, pre: Preprocess):
        # not zeroed: every row is written or, past the last sample, zeroed by finish()
        self.images = np.empty((batch_size, *pre.shape), dtype=np.float32)
        self.records: list[Record] = []

    @property
    def count(self) -> int:
        return len(self.records)

    def add(self, run: SampleRun, offset: int, room: int) -> int:
        """Up to ``room`` samples of ``run`` from ``offset`` on; how many were added."""
        records = run.records[offset : offset + room]
        self.images[self.count : self.count + len(records)] = run.images[offset : offset + len(records)]
        self.records.extend(records)
        return len(records)

    def finish(self, value_range: tuple[float, float]) -> Batch:
        n = self.count
        self.images[n:] = 0.0  # the padding stays zero whatever the range
        unit = self.images[:n]
        mapped = to_model_range(unit, value_range)
        if mapped is not unit:  # (0, 1) maps to itself
            unit[...] = mapped
        return Batch(self.images, n, self.records)


def call_model(fn, *args, **kwargs) -> np.ndarray:
    """A backend call (``encode`` / ``decode``) whose runtime errors (a shape the engine was not built for, a
    provider failure, out of memory) become one line instead of a traceback; the caller cleans up."""
    try:
        return np.asarray(fn(*args, **kwargs))
    except UserError:
        raise
    except Exception as err:  # noqa: BLE001 - torch, onnxruntime and tensorrt raise many types
        raise UserError(f"the model failed: {type(err).__name__}: {one_line(err, 200)}") from None


def padded_calls(fn: Callable[..., np.ndarray], arrays: tuple[np.ndarray, ...] | np.ndarray,
                 batch_size: int) -> np.ndarray:
    """``fn(*rows)`` over the rows of ``arrays`` (one array, or several with the same row count, such as x and
    y) in batches of exactly ``batch_size`` rows, the last one zero-padded; returns the real rows' outputs
    concatenated (an empty float32 array for no rows). Errors become one line (``call_model``)."""
    if batch_size < 1:
        raise UserError(f"--batch-size must be at least 1, not {batch_size}")
    arrays = (arrays,) if isinstance(arrays, np.ndarray) else tuple(arrays)
    n = len(arrays[0])
    outputs = []
    for start in range(0, n, batch_size):
        parts = []
        for a in arrays:
            chunk = a[start : start + batch_size]
            padded = np.zeros((batch_size, *a.shape[1:]), dtype=np.float32)
            padded[: len(chunk)] = chunk
            parts.append(padded)
        outputs.append(call_model(fn, *parts)[: min(batch_size, n - start)])
    return np.concatenate(outputs) if outputs else np.zeros((0,), dtype=np.float32)
