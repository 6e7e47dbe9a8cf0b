"""Threaded decoding for the encode path (inputs of the encoder G_z(x), Dumoulin et al. 2017, section 2; the
pixels of Appendix A): image files and video frames become [C, S, S] samples in [0, 1], in input order.

Decoding and resizing run in a thread pool (OpenCV releases the GIL), fed by one thread that walks the sources
and reads video frames; work travels in small ordered chunks through a bounded queue, so memory stays O(chunk)
however many inputs there are.
"""

from __future__ import annotations

import concurrent.futures as cf
import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import numpy as np

from alitool.contract.preprocess import Preprocess, load_image, prepare_frame, quiet_opencv
from alitool.errors import first_line
from alitool.io import BadInput
from alitool.io.sources import ImageInput, Input, Skipped, VideoInput
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
            out.append(Skipped(item.path, f"unexpected {type(err).__name__}: {first_line(err, 120, default='')}"))
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
