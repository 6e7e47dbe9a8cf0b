"""The batched encode pipeline: SOURCES -> decoded, prepared images -> fixed-size batches -> x -> z -> .npy.

This is inference with the encoder G_z(x) of the paper (Dumoulin et al. 2017, section 2), at scale: the
features are the posterior mean (default), a sample of q(z | x), or the section 4.3 SVM feature vector.

Why it is fast and small:
- decoding and resizing run in a thread pool (OpenCV releases the GIL), fed by one thread that walks the
  sources and reads video frames, while the main thread runs the model: the three overlap;
- work travels in small ordered chunks through a bounded queue, so memory is O(batch) however many inputs;
- batches have one fixed size (the last one is zero-padded), which ONNX Runtime and TensorRT profiles like;
- rows go into a memory-mapped ``.npy`` in a hidden temporary file that only replaces the output once
  complete, together with an index CSV (row, source, frame, time) so that no row is anonymous.
"""

from __future__ import annotations

import concurrent.futures as cf
import csv
import errno
import math
import os
import queue
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from alitool.errors import UserError
from alitool.io import BadInput
from alitool.io.images import Preprocess, load_image, prepare_frame, quiet_opencv
from alitool.io.sources import ImageInput, Input, Skipped, VideoInput, expand_sources
from alitool.io.video import VideoFrames

IMAGE_CHUNK = 16  # images per worker task: amortises the per-task overhead on tiny images
VIDEO_CHUNK = 8  # raw frames per worker task: 8 x 640x480x3 = 7 MB in flight per chunk


@dataclass(frozen=True)
class Record:
    """Where one output row comes from."""

    source: str
    frame: int | None = None  # video frame number, 0-based; None for images
    time_s: float | None = None  # video timestamp in seconds


@dataclass(frozen=True)
class Sample:
    image: np.ndarray  # float32 [C, S, S] in [0, 1]
    record: Record


@dataclass(frozen=True)
class Notice:
    """Something to tell the user about an input that was still used (a truncated video's good frames)."""

    source: str
    message: str


@dataclass
class Batch:
    images: np.ndarray  # float32 [batch_size, C, S, S] in the model's value range; rows >= count are padding
    count: int
    records: list[Record]


def decode_stream(inputs: Iterable[Input], pre: Preprocess, workers: int = 2,
                  chunks_ahead: int | None = None) -> Iterator[Sample | Skipped | Notice]:
    """Decode and prepare ``inputs`` in ``workers`` threads; yield results in input order.

    One feeder thread walks ``inputs`` (folder walks, globs, video demuxing) and submits chunks to the pool;
    at most ``chunks_ahead`` chunks wait in the queue, which bounds memory. Closing the generator (or an
    exception in the consumer, Ctrl-C included) stops the feeder and cancels queued work."""
    quiet_opencv()
    workers = max(1, int(workers))
    pending: queue.Queue = queue.Queue(maxsize=chunks_ahead or 2 * workers + 4)
    stop = threading.Event()
    pool = cf.ThreadPoolExecutor(workers, thread_name_prefix="alitool-decode")
    end = object()

    def put(item) -> bool:
        while not stop.is_set():
            try:
                pending.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def feed() -> None:
        try:
            _feed(inputs, pre, pool, put, stop)
        except BaseException as err:  # noqa: BLE001 - handed to the consumer, re-raised in its thread
            put(_finished_future(error=err))
        finally:
            put(end)

    feeder = threading.Thread(target=feed, name="alitool-feed", daemon=True)
    feeder.start()
    try:
        while True:
            future = pending.get()
            if future is end:
                return
            yield from future.result()
    finally:
        stop.set()
        while True:
            try:
                leftover = pending.get_nowait()
            except queue.Empty:
                break
            if leftover is not end:
                leftover.cancel()
        pool.shutdown(wait=False, cancel_futures=True)
        feeder.join(timeout=5)


def _feed(inputs: Iterable[Input], pre: Preprocess, pool: cf.ThreadPoolExecutor,
          put: Callable[[object], bool], stop: threading.Event) -> None:
    images: list[ImageInput] = []

    def flush_images() -> bool:
        ok = not images or put(pool.submit(_load_images, list(images), pre))
        images.clear()
        return ok

    for item in inputs:
        if stop.is_set():
            return
        if isinstance(item, ImageInput):
            images.append(item)
            if len(images) == IMAGE_CHUNK and not flush_images():
                return
            continue
        if not flush_images():
            return
        if isinstance(item, Skipped):
            ok = put(_finished_future([item]))
        else:
            ok = _feed_video(item, pre, pool, put)
        if not ok:
            return
    flush_images()


def _feed_video(item: VideoInput, pre: Preprocess, pool: cf.ThreadPoolExecutor,
                put: Callable[[object], bool]) -> bool:
    """Read frames here (demuxing is sequential), prepare them in the pool. False when told to stop."""
    stride = item.stride if item.frame is None else max(1, item.frame)
    frames = VideoFrames(item.path, stride)
    chunk: list[tuple[int, float, np.ndarray]] = []
    try:
        for number, time_s, bgr in frames:
            if item.frame is not None and number != item.frame:
                if number > item.frame:
                    break
                continue
            chunk.append((number, time_s, bgr))
            if len(chunk) == VIDEO_CHUNK or item.frame is not None:
                if not put(pool.submit(_prepare_frames, item.path, chunk, pre)):
                    return False
                chunk = []
            if item.frame is not None:
                return True
    except BadInput as err:
        return put(_finished_future([Skipped(item.path, str(err))]))
    if chunk and not put(pool.submit(_prepare_frames, item.path, chunk, pre)):
        return False
    if item.frame is not None:
        return put(_finished_future([Skipped(f"{item.path}@{item.frame}", "the video has no such frame")]))
    if frames.damage:
        return put(_finished_future([Notice(item.path, frames.damage)]))
    return True


def _load_images(items: list[ImageInput], pre: Preprocess) -> list[Sample | Skipped]:
    out: list[Sample | Skipped] = []
    for item in items:
        try:
            out.append(Sample(load_image(item.path, pre), Record(item.path)))
        except BadInput as err:
            out.append(Skipped(item.path, str(err)))
        except Exception as err:  # noqa: BLE001 - one odd file must never end a run of a million
            out.append(Skipped(item.path, f"unexpected {type(err).__name__}: {str(err)[:120]}"))
    return out


def _prepare_frames(path: str, frames: list[tuple[int, float, np.ndarray]], pre: Preprocess) -> list[Sample]:
    return [Sample(prepare_frame(bgr, pre), Record(path, number, time_s)) for number, time_s, bgr in frames]


def _finished_future(result: list | None = None, error: BaseException | None = None) -> cf.Future:
    future: cf.Future = cf.Future()
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result or [])
    return future


def batches(stream: Iterable[Sample | Skipped | Notice], pre: Preprocess, batch_size: int,
            value_range: tuple[float, float] = (0.0, 1.0), on_skip: Callable[[Skipped], None] = lambda s: None,
            on_notice: Callable[[Notice], None] = lambda n: None, limit: int = 0) -> Iterator[Batch]:
    """Group samples into fixed-size batches (the last one zero-padded) mapped to the model's value range;
    skipped inputs and notices go to the callbacks as they pass. ``limit`` > 0 stops after that many rows."""
    if batch_size < 1:
        raise UserError(f"--batch-size must be at least 1, not {batch_size}")
    low, high = value_range
    images = np.zeros((batch_size, *pre.shape), dtype=np.float32)
    records: list[Record] = []
    total = 0

    def finish() -> Batch:
        if (low, high) != (0.0, 1.0):
            images[: len(records)] = images[: len(records)] * (high - low) + low
        return Batch(images, len(records), list(records))

    for item in stream:
        if isinstance(item, Skipped):
            on_skip(item)
            continue
        if isinstance(item, Notice):
            on_notice(item)
            continue
        images[len(records)] = item.image
        records.append(item.record)
        total += 1
        if len(records) == batch_size or total == limit:
            yield finish()
            images = np.zeros((batch_size, *pre.shape), dtype=np.float32)
            records = []
            if total == limit:
                return
    if records:
        yield finish()


def _temp_beside(path: Path) -> tuple[int, Path]:
    """A hidden temporary file next to ``path`` (same file system, so ``os.replace`` is atomic), with the
    permissions a plainly created file would get (``mkstemp`` makes 0600 files)."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.fchmod(fd, 0o666 & ~_umask())
    return fd, Path(tmp)


def _umask() -> int:
    try:  # read it where the kernel shows it: setting it to read it back would race with other threads
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def index_path_for(out: str | Path) -> Path:
    """``feats.npy`` -> ``feats.index.csv``."""
    out = Path(out)
    return out.with_name(out.stem + ".index.csv")


class NpyRowWriter:
    """Append float32 rows to a ``.npy`` through memory maps over a hidden temporary file next to ``path``;
    ``commit()`` writes the final header and renames it over ``path``; ``abort()`` deletes it.

    Each append maps only the rows it writes and unmaps them at once, so the process never holds more than
    one batch of the file (the kernel writes the pages back). The row count is unknown in advance (skipped
    files, video lengths), so the file grows by doubling, with its blocks reserved up front; NumPy's header
    keeps spare room for the row count, so the final header is rewritten in place."""

    def __init__(self, path: str | Path, dim: int, capacity: int = 4096):
        self.path, self.dim, self.rows = Path(path), int(dim), 0
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, self.tmp = _temp_beside(self.path)
        self._file = os.fdopen(fd, "r+b")
        self._offset = self._write_header(0)
        self.capacity = 0
        self._grow(max(1, capacity))

    def _write_header(self, rows: int) -> int:
        self._file.seek(0)
        header = {"descr": "<f4", "fortran_order": False, "shape": (rows, self.dim)}
        np.lib.format.write_array_header_1_0(self._file, header)
        self._file.flush()
        return self._file.tell()

    def _grow(self, capacity: int) -> None:
        size = self._offset + capacity * self.dim * 4
        try:  # reserve real blocks: a full disk must fail here as an OSError, not as SIGBUS inside a map
            os.posix_fallocate(self._file.fileno(), 0, size)
        except (AttributeError, OSError) as err:
            if isinstance(err, OSError) and err.errno not in (errno.EOPNOTSUPP, errno.EINVAL):
                raise UserError(f"{self.path}: cannot reserve space for the features: {err.strerror}") from None
            self._file.truncate(size)  # a file system without fallocate: sparse, like np.lib.format.open_memmap
        self.capacity = capacity

    def append(self, rows: np.ndarray) -> None:
        rows = np.asarray(rows, dtype=np.float32)
        if rows.ndim != 2 or rows.shape[1] != self.dim:
            raise UserError(f"the model returned features of shape {rows.shape}; expected [n, {self.dim}]")
        if not len(rows):
            return
        end = self.rows + len(rows)
        if end > self.capacity:
            self._grow(max(end, 2 * self.capacity))
        window = np.memmap(self._file, dtype="<f4", mode="r+", offset=self._offset + self.rows * self.dim * 4,
                           shape=rows.shape)
        window[:] = rows
        window._mmap.close()  # unmap now, not whenever the garbage collector gets to it
        self.rows = end

    def commit(self) -> None:
        self._file.truncate(self._offset + self.rows * self.dim * 4)
        if self._write_header(self.rows) != self._offset:  # cannot happen with NumPy's padded header
            raise RuntimeError("the .npy header changed length")
        os.fsync(self._file.fileno())
        self._file.close()
        os.replace(self.tmp, self.path)

    def abort(self) -> None:
        self._file.close()
        self.tmp.unlink(missing_ok=True)


class IndexWriter:
    """The row index next to the features, ``row,source,frame,time_s``, written atomically like the .npy."""

    FIELDS = ("row", "source", "frame", "time_s")

    def __init__(self, path: str | Path):
        self.path = Path(path)
        fd, self.tmp = _temp_beside(self.path)
        # surrogateescape: file names that are not valid UTF-8 are written back byte for byte
        self._file = os.fdopen(fd, "w", encoding="utf-8", errors="surrogateescape", newline="")
        self._csv = csv.writer(self._file)
        self._csv.writerow(self.FIELDS)
        self.rows = 0

    def append(self, records: list[Record]) -> None:
        for record in records:
            time_s = "" if record.time_s is None or math.isnan(record.time_s) else f"{record.time_s:.6f}"
            frame = "" if record.frame is None else record.frame
            self._csv.writerow((self.rows, record.source, frame, time_s))
            self.rows += 1

    def commit(self) -> None:
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        os.replace(self.tmp, self.path)

    def abort(self) -> None:
        self._file.close()
        self.tmp.unlink(missing_ok=True)


class FeatureFiles:
    """The features ``.npy`` and its index CSV, written as a pair: ``commit()`` lands both; leaving the ``with``
    block on an exception removes both temporary files, so a failed run never leaves half a result."""

    def __init__(self, out: str | Path):
        self.out = Path(out)
        if self.out.suffix.lower() != ".npy":
            raise UserError(f"--out {self.out}: the features file must end in .npy")
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self.npy: NpyRowWriter | None = None  # opened at the first batch, when the feature width is known
        self.index = IndexWriter(index_path_for(self.out))

    @property
    def rows(self) -> int:
        return 0 if self.npy is None else self.npy.rows

    def append(self, feats: np.ndarray, records: list[Record]) -> None:
        if self.npy is None:
            self.npy = NpyRowWriter(self.out, feats.shape[1] if feats.ndim == 2 else 0)
        self.npy.append(feats)
        self.index.append(records)

    def commit(self, report: RunReport) -> None:
        report.rows, report.dim = self.npy.rows, self.npy.dim
        self.npy.commit()
        self.index.commit()

    def __enter__(self) -> FeatureFiles:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            if self.npy is not None:
                self.npy.abort()
            self.index.abort()


@dataclass
class RunReport:
    """What a run did: rows produced, and every input skipped or worth a warning, in input order."""

    rows: int = 0
    dim: int = 0
    seconds: float = 0.0
    skipped: list[Skipped] = field(default_factory=list)
    notices: list[Notice] = field(default_factory=list)
    warn: Callable[[str], None] = field(default=lambda line: stderr_line(line), repr=False)

    @property
    def rate(self) -> float:
        return self.rows / self.seconds if self.seconds > 0 else 0.0

    def on_skip(self, item: Skipped) -> None:
        self.skipped.append(item)
        self.warn(f"warning: {printable(item.source)}: skipped: {item.reason}")

    def on_notice(self, item: Notice) -> None:
        self.notices.append(item)
        self.warn(f"warning: {printable(item.source)}: {item.message}")

    def summary(self, what: str = "rows") -> str:
        line = f"{self.rows} {what} in {self.seconds:.1f} s ({self.rate:.0f}/s)"
        if self.skipped:
            line += f"; skipped {len(self.skipped)} input{'s' if len(self.skipped) != 1 else ''} (see the warnings)"
        if self.notices:
            line += f"; {len(self.notices)} damaged video{'s' if len(self.notices) != 1 else ''} partly read"
        return line


def printable(text: str) -> str:
    """A file name that may hold undecodable bytes, safe to print on any terminal."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def stderr_line(text: str) -> None:
    from tqdm import tqdm

    tqdm.write(text, file=sys.stderr)  # above a progress bar, when there is one


def call_model(fn, *args, **kwargs) -> np.ndarray:
    """A backend call (``encode`` / ``decode``) whose runtime errors (a shape the engine was not built for, a
    provider failure, out of memory) become one line instead of a traceback; the caller cleans up."""
    try:
        return np.asarray(fn(*args, **kwargs))
    except UserError:
        raise
    except Exception as err:  # noqa: BLE001 - torch, onnxruntime and tensorrt raise many types
        reason = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
        raise UserError(f"the model failed: {type(err).__name__}: {reason}") from None


def preprocess_for(backend, max_pixels: int | None = None, jpeg_draft: bool = True) -> Preprocess:
    """The model's own input recipe; refuses models that do not take images (the 2-D toy experiment)."""
    meta = backend.meta
    if not meta.image_size:
        raise UserError(f"model {meta.name!r} takes {meta.channels}-D vectors, not images; nothing to decode")
    if not meta.has_encoder:
        raise UserError(f"model {meta.name!r} has no encoder (a decoder-only export); pass the run folder or "
                        "encoder.onnx")
    if max_pixels is None:
        return Preprocess.from_meta(meta, jpeg_draft=jpeg_draft)
    return Preprocess.from_meta(meta, max_pixels, jpeg_draft)


def model_batches(backend, sources: Iterable[str], report: RunReport, *, batch_size: int = 64, workers: int = 2,
                  stride: int = 1, max_pixels: int | None = None, limit: int = 0,
                  jpeg_draft: bool = True) -> Iterator[Batch]:
    """Fixed-size batches of the inputs named by ``sources``, prepared for ``backend``'s model; skipped inputs
    and damaged videos are reported to ``report`` as they pass."""
    pre = preprocess_for(backend, max_pixels, jpeg_draft)
    stream = decode_stream(expand_sources(sources, stride), pre, workers)
    yield from batches(stream, pre, batch_size, backend.meta.value_range, report.on_skip, report.on_notice, limit)


def encode_to_npy(backend, sources: Iterable[str], out: str | Path, *, kind: str = "mean", batch_size: int = 64,
                  workers: int = 2, stride: int = 1, max_pixels: int | None = None, progress: bool = True,
                  report: RunReport | None = None, jpeg_draft: bool = True) -> RunReport:
    """Encode every input named by ``sources`` with ``backend``; write ``out`` (float32 [N, D] .npy) and its
    index CSV atomically. Bad inputs are skipped with one warning line each and listed in the report."""
    from tqdm import tqdm

    report = report or RunReport()
    with FeatureFiles(out) as files:
        bar = tqdm(unit="img", desc="encode", disable=None if progress else True, file=sys.stderr, smoothing=0.1)
        start = time.perf_counter()
        try:
            for batch in model_batches(backend, sources, report, batch_size=batch_size, workers=workers,
                                       stride=stride, max_pixels=max_pixels, jpeg_draft=jpeg_draft):
                feats = call_model(backend.encode, batch.images, kind=kind)[: batch.count]
                files.append(feats, batch.records)
                bar.update(batch.count)
            if files.rows == 0:
                raise UserError(f"nothing to encode: no usable image or video frame in the sources "
                                f"({len(report.skipped)} skipped); {out} was not written")
            files.commit(report)
        finally:
            bar.close()
    report.seconds = time.perf_counter() - start
    return report
