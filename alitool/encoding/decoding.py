"""Threaded decoding for the encode path (inputs of the encoder G_z(x), Dumoulin et al. 2017, section 2; the
pixels of Appendix A): image files and video frames become [C, S, S] samples in [0, 1], in input order.

Decoding and resizing run in a thread pool (OpenCV releases the GIL), fed by one thread that walks the sources
and reads video frames; work travels in small ordered chunks through a bounded queue, so memory stays O(chunk)
however many inputs there are.

A chunk comes back as runs of consecutive samples (``SampleRun``: one array for all its images), so that the
per-image work left in Python is reading, decoding and resizing; the channel reorder and the float conversion
run once per chunk, and the batcher copies whole runs. ``decode_runs`` gives the runs, ``decode_stream`` one
``Sample`` per image.
"""

from __future__ import annotations

import concurrent.futures as cf
import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import numpy as np

from alitool.contract.preprocess import (
    Preprocess,
    decode,
    levels_to_pixels,
    quiet_opencv,
    read_file,
    to_levels,
    to_unit_float,
)
from alitool.errors import one_line
from alitool.io import BadInput
from alitool.io.sources import ImageInput, Input, Skipped, VideoInput
from alitool.io.video import VideoFrames

IMAGE_CHUNK = 64  # images per worker task: the handoffs between threads cost more than decoding a thumbnail
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
class SampleRun:
    """Consecutive samples prepared together: row i of ``images`` comes from ``records[i]``."""

    images: np.ndarray  # float32 [N, C, S, S] in [0, 1]
    records: list[Record]

    def samples(self) -> Iterator[Sample]:
        return (Sample(image, record) for image, record in zip(self.images, self.records, strict=True))


@dataclass(frozen=True)
class Notice:
    """Something to tell the user about an input that was still used (a truncated video's good frames)."""

    source: str
    message: str


def decode_stream(inputs: Iterable[Input], pre: Preprocess, workers: int = 2,
                  chunks_ahead: int | None = None) -> Iterator[Sample | Skipped | Notice]:
    """``decode_runs`` one sample at a time: every input's result in input order."""
    runs = decode_runs(inputs, pre, workers, chunks_ahead)
    try:
        for item in runs:
            if isinstance(item, SampleRun):
                yield from item.samples()
            else:
                yield item
    finally:
        runs.close()  # stops the threads now, not when the garbage collector gets to it


def decode_runs(inputs: Iterable[Input], pre: Preprocess, workers: int = 2,
                chunks_ahead: int | None = None) -> Iterator[SampleRun | Skipped | Notice]:
    """Decode and prepare ``inputs`` in ``workers`` threads; yield results in input order, consecutive samples
    of one chunk together.

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
    frames = VideoFrames(item.path, stride, max_pixels=pre.max_pixels)  # --max-megapixels holds for frames too
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


def _load_images(items: list[ImageInput], pre: Preprocess) -> list[SampleRun | Skipped]:
    """One chunk of image files, in order: runs of the good ones, each bad one as Skipped in its place."""
    levels = _levels_buffer(len(items), pre)
    results: list[Record | Skipped] = []
    kept = 0
    for item in items:
        try:
            _store(levels, kept, to_levels(decode(read_file(item.path), pre), pre))
        except BadInput as err:
            results.append(Skipped(item.path, str(err)))
        except Exception as err:  # noqa: BLE001 - one odd file must never end a run of a million
            results.append(Skipped(item.path, f"unexpected {type(err).__name__}: {one_line(err, 120, default='')}"))
        else:
            kept += 1
            results.append(Record(item.path))
    return _runs(results, to_unit_float(levels_to_pixels(levels[:kept], pre)))


def _prepare_frames(path: str, frames: list[tuple[int, float, np.ndarray]], pre: Preprocess) -> list[SampleRun]:
    levels = _levels_buffer(len(frames), pre)
    for i, (_, _, bgr) in enumerate(frames):
        _store(levels, i, to_levels(bgr, pre))
    images = to_unit_float(levels_to_pixels(levels, pre))
    return [SampleRun(images, [Record(path, number, time_s) for number, time_s, _ in frames])]


def _levels_buffer(n: int, pre: Preprocess) -> np.ndarray:
    """Room for ``n`` results of ``to_levels``: one channel for a grayscale model, BGR for a colour one."""
    s = pre.image_size
    return np.empty((n, s, s) if pre.channels == 1 else (n, s, s, 3), dtype=np.uint8)


def _store(levels: np.ndarray, row: int, image: np.ndarray) -> None:
    """``image`` (``to_levels``) into ``levels[row]``; a one-channel image into all three channels of a colour
    model's buffer, as ``to_pixels`` replicates it."""
    levels[row] = image if image.ndim == levels.ndim - 1 else image[..., None]


def _runs(results: list[Record | Skipped], images: np.ndarray) -> list[SampleRun | Skipped]:
    """A chunk's results in order, consecutive records grouped into runs over the rows of ``images``."""
    out: list[SampleRun | Skipped] = []
    run: list[Record] = []
    row = 0
    for item in results:
        if isinstance(item, Record):
            run.append(item)
            continue
        if run:
            out.append(SampleRun(images[row : row + len(run)], run))
            row, run = row + len(run), []
        out.append(item)
    if run:
        out.append(SampleRun(images[row : row + len(run)], run))
    return out


def _finished_future(result: list | None = None, error: BaseException | None = None) -> cf.Future:
    future: cf.Future = cf.Future()
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result or [])
    return future
