"""Command-line SOURCES -> a lazy, ordered stream of images, videos and skipped inputs.

A source is an image file, a folder (walked recursively, names sorted, hidden entries ignored), a glob
pattern (``"shots/**/*.jpg"``), a ``.txt`` file listing one path per line (relative paths are relative to
the list's folder; blank lines and ``#`` comments are ignored), a video, or one video frame ``clip.mp4@120``.
Nothing is opened here beyond ``stat`` and folder listings: decoding happens later, in worker threads. The
expansion is lazy so that a folder of millions of files starts encoding at once and is never held in memory.

Whatever cannot be used (missing path, unknown extension, symbolic link loop, empty folder, unreadable list)
comes out as ``Skipped(source, reason)`` in its place in the stream, so that warnings appear in input order.
"""

from __future__ import annotations

import errno
import glob
import os
import re
import stat
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from alitool.contract.preprocess import IMAGE_EXTENSIONS, os_reason
from alitool.io.video import VIDEO_EXTENSIONS

LIST_EXTENSIONS = (".txt",)
_GLOB_CHARS = re.compile(r"[*?\[]")
_FRAME_REF = re.compile(r"^(?P<video>.+)@(?P<frame>\d+)$")


@dataclass(frozen=True)
class ImageInput:
    path: str


@dataclass(frozen=True)
class VideoInput:
    path: str
    stride: int = 1
    frame: int | None = None  # one frame only ("clip.mp4@120")


@dataclass(frozen=True)
class Skipped:
    source: str
    reason: str


Input = ImageInput | VideoInput | Skipped


def expand_sources(sources: Iterable[str], stride: int = 1) -> Iterator[Input]:
    """Every input named by ``sources``, in order (folders sorted by name, depth first)."""
    for text in sources:
        yield from _expand(str(text), stride, allow_lists=True)


def parse_frame_ref(text: str) -> tuple[str, int] | None:
    """``"clip.mp4@120"`` -> ``("clip.mp4", 120)`` when that names a video and is not itself a file."""
    match = _FRAME_REF.match(text)
    if match is None or os.path.lexists(text):
        return None
    video = match["video"]
    if os.path.splitext(video)[1].lower() not in VIDEO_EXTENSIONS:
        return None
    return video, int(match["frame"])


def _expand(text: str, stride: int, allow_lists: bool) -> Iterator[Input]:
    if "\0" in text:
        yield Skipped(text.replace("\0", "\\0"), "a path cannot contain a NUL byte")
        return
    ref = parse_frame_ref(text)
    if ref is not None:
        if not os.path.lexists(ref[0]):
            yield Skipped(ref[0], "no such video")
        else:
            yield VideoInput(ref[0], stride, frame=ref[1])
        return
    if not os.path.lexists(text) and _GLOB_CHARS.search(text):
        matches = sorted(glob.glob(text, recursive=True))
        if not matches:
            yield Skipped(text, "the pattern matches no files")
        for match in matches:
            yield from _expand_path(match, stride, allow_lists)
        return
    yield from _expand_path(text, stride, allow_lists)


def _expand_path(path: str, stride: int, allow_lists: bool) -> Iterator[Input]:
    try:
        info = os.stat(path)
    except OSError as err:
        yield Skipped(path, _stat_reason(path, err))
        return
    if stat.S_ISDIR(info.st_mode):
        found = 0
        for item in _walk(path, frozenset({(info.st_dev, info.st_ino)}), stride):
            found += not isinstance(item, Skipped)
            yield item
        if not found:
            yield Skipped(path, "the folder holds no images or videos")
        return
    yield from _classify(path, info, stride, allow_lists)


def _stat_reason(path: str, err: OSError) -> str:
    if not os.path.lexists(path):
        return "no such file or folder"
    if err.errno == errno.ENOENT:  # the name exists, what it points to does not
        return "broken symbolic link: its target does not exist"
    return os_reason(err)


def _walk(folder: str, ancestors: frozenset, stride: int) -> Iterator[Input]:
    """Depth-first, names sorted; follows symbolic links to folders but never into one of its own ancestors."""
    try:
        with os.scandir(folder) as listing:  # (name, plain file?): a huge folder's listing is held while walked
            entries = sorted((entry.name, _plain_file(entry)) for entry in listing)
    except OSError as err:
        yield Skipped(folder, f"the folder cannot be listed: {os_reason(err)}")
        return
    prefix = os.path.join(folder, "")  # prefix + name is os.path.join(folder, name), without its call
    for name, plain in entries:
        if name.startswith("."):  # hidden files, and our own temporary outputs
            continue
        path = prefix + name
        if plain:  # most entries: known from the listing, without a stat call
            yield from _classify(path, None, stride, allow_lists=False)
            continue
        try:
            info = os.stat(path)
        except OSError as err:
            yield Skipped(path, _stat_reason(path, err))
            continue
        if stat.S_ISDIR(info.st_mode):
            key = (info.st_dev, info.st_ino)
            if key in ancestors:
                yield Skipped(path, "symbolic link loop: it leads back into a folder being walked")
                continue
            yield from _walk(path, ancestors | {key}, stride)
        else:
            yield from _classify(path, info, stride, allow_lists=False)


def _plain_file(entry: os.DirEntry) -> bool:
    """A regular file that is not a symbolic link, by the type the folder listing gives (where the file system
    gives none, by one lstat). Links and everything else take the full stat path of ``_walk``."""
    try:
        return entry.is_file(follow_symlinks=False)
    except OSError:
        return False


def _classify(path: str, info: os.stat_result | None, stride: int, allow_lists: bool) -> Iterator[Input]:
    """What the entry ``path`` is, by its extension; ``info`` None: a regular file already."""
    suffix = os.path.splitext(path)[1].lower()
    if info is not None and not stat.S_ISREG(info.st_mode):
        yield Skipped(path, "not a regular file (a socket, FIFO or device)")
    elif suffix in IMAGE_EXTENSIONS:
        yield ImageInput(path)
    elif suffix in VIDEO_EXTENSIONS:
        yield VideoInput(path, stride)
    elif suffix in LIST_EXTENSIONS and allow_lists:
        yield from _read_list(path, stride)
    elif suffix in LIST_EXTENSIONS:
        yield Skipped(path, "a .txt path list is only read when named on the command line")
    else:
        kind = f"'{suffix}'" if suffix else "without an extension"
        yield Skipped(path, f"unknown file type {kind}: not an image, a video or a .txt path list")


_MAX_LINE = 65536  # no path is this long: a longer line is binary junk, skipped without being held


def _read_list(list_path: str, stride: int) -> Iterator[Input]:
    base = os.path.dirname(list_path)
    entries = 0
    try:
        with open(list_path, encoding="utf-8", errors="surrogateescape") as f:
            number = 0
            while True:  # streamed: a list of millions of paths is never held in memory
                raw = f.readline(_MAX_LINE)
                if not raw:
                    break
                number += 1
                where = f"{list_path}:{number}"
                if len(raw) >= _MAX_LINE and not raw.endswith("\n"):
                    while raw and not raw.endswith("\n"):  # the rest of the over-long line
                        raw = f.readline(_MAX_LINE)
                    entries += 1
                    yield Skipped(where, f"a line over {_MAX_LINE} characters is not a path (a binary file?)")
                    continue
                line = raw.strip()
                if not line or line.startswith("#"):
                    continue
                entries += 1
                if "\0" in line:
                    yield Skipped(where, "the line contains a NUL byte: not a path (a binary file?)")
                    continue
                yield from _expand(line if os.path.isabs(line) else os.path.join(base, line), stride, False)
    except (OSError, ValueError) as err:
        yield Skipped(list_path, f"cannot read the path list: {os_reason(err) if isinstance(err, OSError) else err}")
        return
    if not entries:
        yield Skipped(list_path, "the path list is empty")
