"""Video frames in (every K-th frame, with frame numbers and timestamps) and side-by-side videos out.

Frames are read in order with OpenCV's FFmpeg backend: skipped frames are only ``grab``bed (demuxed and
decoded, never converted), which is the accurate way to honour a stride; seeking by frame number is not
exact for most codecs, and a frame number in the index must mean the same frame for every reader.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from alitool.atomic import commit, discard, temp_beside
from alitool.contract.preprocess import DEFAULT_MAX_PIXELS, check_pixels, os_reason
from alitool.errors import UserError
from alitool.io import BadInput

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mkv", ".mov", ".webm", ".m4v")
# A file that reports N frames and stops well short of that is damaged; the frames read so far are kept.
_TRUNCATED_FRACTION = 0.9


def open_video(path: str | Path):
    """An opened ``cv2.VideoCapture`` or BadInput (unreadable file, corrupt or unsupported video)."""
    import cv2

    try:
        with open(path, "rb") as f:  # OpenCV says nothing useful about permissions: check them first
            if not f.read(1):
                raise BadInput("empty file (0 bytes)")
    except OSError as err:
        raise BadInput(os_reason(err)) from None
    cap = cv2.VideoCapture(str(path))
    if not cap.isOpened():
        cap.release()
        raise BadInput("cannot open the video (corrupt, truncated, or a codec this OpenCV build lacks)")
    return cap


class VideoFrames:
    """Iterate ``(frame_number, time_s, bgr_frame)`` over every ``stride``-th frame of a video, from frame 0.

    After the loop, ``frames_seen`` counts all decoded frames and ``damage`` holds a reason when the video
    stopped well short of the frame count in its header (the frames read are still good). A video with no
    frame at all raises BadInput at the first ``next``."""

    def __init__(self, path: str | Path, stride: int = 1, max_pixels: int = DEFAULT_MAX_PIXELS):
        if stride < 1:
            raise UserError(f"--stride must be at least 1, not {stride}")
        self.path, self.stride, self.max_pixels = str(path), stride, max_pixels
        self.frames_seen = 0
        self.reported_frames = 0
        self.fps = 0.0
        self.damage = ""

    def __iter__(self) -> Iterator[tuple[int, float, np.ndarray]]:
        import cv2

        cap = open_video(self.path)
        try:
            self.fps = cap.get(cv2.CAP_PROP_FPS) or 0.0
            self.reported_frames = max(0, int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0))
            # the frame size from the stream's header, before any frame is allocated (the images' pixel limit)
            width, height = int(cap.get(cv2.CAP_PROP_FRAME_WIDTH) or 0), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT) or 0)
            if width > 0 and height > 0:  # 0: unknown to this backend until a frame is read
                check_pixels(width, height, self.max_pixels, what="video frame")
            index = 0
            while True:
                if index % self.stride == 0:
                    ok, frame = cap.read()
                else:
                    ok, frame = cap.grab(), None
                if not ok:
                    break
                self.frames_seen = index + 1
                if frame is not None:
                    yield index, frame_time(index, self.fps), frame
                index += 1
        finally:
            cap.release()
        if self.frames_seen == 0:
            raise BadInput("the video has no frames" if self.reported_frames == 0 else
                           f"no frame could be decoded (the header says {self.reported_frames})")
        if self.frames_seen < _TRUNCATED_FRACTION * self.reported_frames:
            self.damage = (f"the video stopped after {self.frames_seen} of the {self.reported_frames} frames its "
                           "header announces (truncated or damaged); the frames read are kept")


def frame_time(index: int, fps: float) -> float:
    return index / fps if fps > 0 else math.nan


def read_frame(path: str | Path, number: int) -> np.ndarray:
    """Frame ``number`` (0-based, counted as ``VideoFrames`` counts) as BGR uint8, or BadInput."""
    if number < 0:
        raise BadInput(f"frame numbers start at 0, not {number}")
    for index, _, frame in VideoFrames(path, stride=max(1, number) if number else 1):
        if index == number:
            return frame
        if index > number:
            break
    raise BadInput(f"the video has no frame {number}")


_FOURCC = {".mp4": "mp4v", ".m4v": "mp4v", ".mov": "mp4v", ".avi": "MJPG", ".mkv": "MJPG", ".webm": "VP80"}


class AtomicVideoWriter:
    """Write frames to a hidden temporary video next to ``path`` and move it into place on ``close()``, so that
    an interrupted run never leaves a half-written video under the requested name."""

    def __init__(self, path: str | Path, fps: float, size_wh: tuple[int, int]):
        import cv2

        self.path = Path(path)
        suffix = self.path.suffix.lower()
        if suffix not in _FOURCC:
            raise UserError(f"{self.path}: cannot write {suffix or 'extension-less'} videos; use one of "
                            f"{', '.join(_FOURCC)}")
        from alitool.outputs import claim

        self.writer = None
        self.claim = claim(self.path)  # one line for a folder that cannot be written, a lock against a 2nd writer
        # The container is chosen from the extension, so the temporary name keeps it. Creating the file first
        # reserves the name and gives it the umask's permissions; OpenCV then truncates and fills it.
        try:
            fd, self.tmp = temp_beside(self.path, f".tmp{suffix}")
        except OSError as err:
            self.claim.release()
            raise UserError(f"--out {self.path}: cannot write in {self.path.parent} ({err.strerror or err})") from None
        os.close(fd)
        fourcc = cv2.VideoWriter_fourcc(*_FOURCC[suffix])
        self.writer = cv2.VideoWriter(str(self.tmp), fourcc, float(fps if fps > 0 else 25.0), size_wh)
        if not self.writer.isOpened():
            self.abort()
            raise UserError(f"{self.path}: this OpenCV build cannot write {suffix} video; try .avi or .mp4")
        self.frames = 0

    def write(self, rgb: np.ndarray) -> None:
        self.writer.write(np.ascontiguousarray(rgb[..., ::-1]))
        self.frames += 1

    def close(self) -> None:
        self.writer.release()
        if self.frames == 0 or not self.tmp.exists() or self.tmp.stat().st_size == 0:  # OpenCV wrote nothing
            self.abort()
            raise UserError(f"{self.path}: no frames were written")
        try:
            if self.path.is_dir():
                raise IsADirectoryError(21, "a folder was made under this name during the run")
            commit(self.tmp, self.path)
        except OSError as err:
            self.abort()
            raise UserError(f"--out {self.path}: cannot write it ({err.strerror or err}); a previous "
                            f"{self.path.name}, if any, is untouched") from None
        claim, self.claim = self.claim, None
        claim.release()

    def abort(self) -> None:
        if self.writer is not None:
            self.writer.release()
        discard(self.tmp)
        if self.claim is not None:
            self.claim.release()
            self.claim = None
