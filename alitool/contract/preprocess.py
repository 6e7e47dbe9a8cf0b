"""The one way an image file becomes a model input, for the training image folders, INT8 calibration and
inference alike.

The paper's models see fixed-size square images with values in [0, 1] (Dumoulin et al. 2017, Appendix A:
SVHN and CIFAR10 32x32 RGB, CelebA and Tiny ImageNet 64x64 RGB; this project's digits 8x8 grayscale). A model
carries that recipe in its metadata (``ModelMeta``: image size, channels, value range, and the config's
``data.crop``), so ``Preprocess`` is built from the model and never retyped.

The steps, each one function, so that every stage computes the same pixels:

1. ``read_file``: the bytes of a regular file (or ``BadInput`` saying why not);
2. ``decode``: bytes -> an H x W (grayscale model) or H x W x 3 (BGR, OpenCV's order) array at the file's own
   depth (uint8, uint16 or float), EXIF orientation applied, alpha dropped, palettes expanded, grayscale
   replicated for colour models and colour converted to luma for grayscale models; large JPEGs decoded at
   1/2, 1/4 or 1/8 scale when ``jpeg_draft`` (the default everywhere; ``--full-jpeg-decode`` is the exception);
3. ``to_pixels``: crop (the central square, or none for "stretch"), resize to S x S at the source's depth
   (area averaging when shrinking, bilinear when enlarging), round to 8-bit levels and reorder to uint8
   [C, S, S] RGB. Every model is trained on 8-bit pixels, so a 16-bit file gives the 8-bit levels nearest to its
   resized values, in every stage. The training loader stores exactly this array;
4. ``to_unit_float``: uint8 -> float32 in [0, 1] as k / 255, the division the training loader performs on its
   batches (then ``alitool.contract.meta.to_model_range`` for the model's value range).

``Preprocess.describe`` writes the same rule in words into every exported ONNX file, so that a C++ or JavaScript
user can reproduce it from the file alone. Every way an image file can be unusable (empty, truncated, not an
image, unreadable, absurdly large) raises ``BadInput`` with a short reason; the caller skips the file.

No torch here, and OpenCV / Pillow are imported inside the functions that need them.
"""

from __future__ import annotations

import errno
import io
import os
import stat
import struct
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np


class BadInput(Exception):
    """One input cannot be used; ``str(err)`` says why in a few words. It is skipped, never fatal (re-exported as
    ``alitool.io.BadInput``)."""


# The version of the artifact contract (this preprocessing, the tensor names and metadata keys of
# ``alitool.contract.names``): written as every exported ONNX file's ``model_version``. A reader that knows
# version N reproduces the inputs of any file that says N; it goes up whenever a file's inputs would change.
CONTRACT_VERSION = 1

# Every extension OpenCV decodes as a still image; the one list for training folders, --calib folders and SOURCES.
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".pgm", ".ppm", ".pbm", ".pnm")
# A 20000x20000 RGB image is 1.2 GB decoded; refuse such files before decoding them, from their header.
DEFAULT_MAX_PIXELS = 64_000_000  # megapixels as `encode --max-megapixels` counts them: millions
# The largest limit anyone may ask for (--max-megapixels): also OpenCV's own decode-size guard, which it reads
# from the environment when cv2 is first imported (``cv2_module``), a second line of defence for every format.
MAX_PIXELS_CEILING = 256 * 1024 * 1024
MAX_FILE_BYTES = 512 * 1024 * 1024
# Decoded pixels of all threads together: a decode reserves its worst case (pixels x 3 channels x 4 bytes) and
# waits while the others hold the rest, so W threads never decode W limit-sized images at once. One image larger
# than the budget (up to the pixel limit) still decodes, alone.
DECODE_BUDGET_BYTES = 768 * 1024 * 1024
# Decodes whose worst case is under this skip the budget: its lock costs more than decoding a thumbnail, and W
# threads add at most W MiB to what the budget holds back.
UNBUDGETED_DECODE_BYTES = 1024 * 1024
_OPENCV_GUARD = "OPENCV_IO_MAX_IMAGE_PIXELS"
os.environ.setdefault(_OPENCV_GUARD, str(MAX_PIXELS_CEILING))  # before anything of ours imports cv2
CROP_POLICIES = ("center", "stretch")


@dataclass(frozen=True)
class Preprocess:
    """How to turn any picture into one model input: uint8 pixels [channels, image_size, image_size], then
    float32 in [0, 1]."""

    image_size: int
    channels: int
    crop: str = "center"  # "center": the central square, resized; "stretch": the whole image, resized
    max_pixels: int = DEFAULT_MAX_PIXELS
    # Decode large JPEGs at 1/2, 1/4 or 1/8 scale (libjpeg DCT scaling) when that still leaves twice the
    # model's resolution: several times faster. The rule of every stage; False is ``--full-jpeg-decode``.
    jpeg_draft: bool = True

    def __post_init__(self):
        if self.crop not in CROP_POLICIES:
            raise ValueError(f"crop must be one of {', '.join(CROP_POLICIES)}, not {self.crop!r}")
        if not 1 <= self.max_pixels <= MAX_PIXELS_CEILING:
            raise ValueError(f"max_pixels must be in [1, {MAX_PIXELS_CEILING}], not {self.max_pixels}")

    @staticmethod
    def from_config(data, max_pixels: int = DEFAULT_MAX_PIXELS, jpeg_draft: bool = True) -> Preprocess:
        """The recipe of a config's ``data`` section (``DataConfig``: image_size, channels, crop)."""
        return Preprocess(data.image_size, data.channels, getattr(data, "crop", "center"), max_pixels, jpeg_draft)

    @staticmethod
    def from_meta(meta, max_pixels: int = DEFAULT_MAX_PIXELS, jpeg_draft: bool = True) -> Preprocess:
        """The training recipe carried by a model (``ModelMeta``; the crop comes from its config)."""
        data = meta.config.get("data", {}) if isinstance(meta.config, dict) else {}
        crop = data.get("crop", "center") if isinstance(data, dict) else "center"
        crop = crop if crop in CROP_POLICIES else "center"
        return Preprocess(meta.image_size, meta.channels, crop, max_pixels, jpeg_draft)

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.channels, self.image_size, self.image_size)

    def describe(self, value_range: tuple[float, float] = (0.0, 1.0)) -> dict[str, str]:
        """This preprocessing in words, one entry per choice: the ``alitool.preprocess.*`` metadata keys of every
        exported ONNX file (and the table in docs/export.md), so that it can be reproduced without alitool."""
        s, low, high = self.image_size, value_range[0], value_range[1]
        jpeg = ("JPEGs whose shorter side // f is at least 2 x the image size, for the largest f of 8, 4, 2, are "
                "decoded by libjpeg at 1/f scale (DCT scaling, OpenCV IMREAD_REDUCED_*); others at full size"
                if self.jpeg_draft else "decoded at full size")
        gray = ("colour files are converted to luma by the decoder: Y = 0.299 R + 0.587 G + 0.114 B (ITU-R "
                "BT.601; a JPEG's own Y channel); colour video frames by OpenCV COLOR_BGR2GRAY"
                if self.channels == 1 else "a one-channel file is replicated into R, G and B")
        value = ("x01" if (low, high) == (0.0, 1.0) else f"x01 * {high - low:g} + {low:g}")
        return {
            "alitool.preprocess.format": str(CONTRACT_VERSION),
            "alitool.preprocess.size": f"{s}x{s}",
            "alitool.preprocess.channel_order": "RGB" if self.channels == 3 else "grayscale (one channel)",
            "alitool.preprocess.layout": f"NCHW float32, [N, {self.channels}, {s}, {s}]",
            "alitool.preprocess.decode": (
                f"OpenCV cv2.imdecode with {'IMREAD_GRAYSCALE' if self.channels == 1 else 'IMREAD_COLOR'} | "
                "IMREAD_ANYDEPTH (libjpeg-turbo, libpng, libtiff, libwebp): the file's bit depth is kept"),
            "alitool.preprocess.exif": "orientation applied (the EXIF Orientation tag's rotation/flip) before cropping",
            "alitool.preprocess.alpha": "dropped: the colour channels as stored, not composited on a background",
            "alitool.preprocess.palette": "expanded to its colours",
            "alitool.preprocess.grayscale": gray,
            "alitool.preprocess.jpeg": jpeg,
            "alitool.preprocess.crop": (
                "center square: side = min(H, W), top = (H - side) // 2, left = (W - side) // 2"
                if self.crop == "center" else "stretch: the whole image, aspect ratio not kept"),
            "alitool.preprocess.resize": (
                f"to {s}x{s} with OpenCV cv2.resize: INTER_AREA when shrinking (either side over {s}), "
                f"INTER_LINEAR when enlarging, none at {s}x{s}; at the file's bit depth"),
            "alitool.preprocess.depth": (
                "rounded to 8-bit levels after resizing: 8-bit as is; 16-bit v -> (v * 255 + 32767) // 65535; "
                "float v -> round(clip(v, 0, 1) * 255)"),
            "alitool.preprocess.scale": "x01 = k / 255 in float32 (k the 8-bit level), so x01 is in [0, 1]",
            "alitool.preprocess.value_range": f"{low:g},{high:g}: model input = {value}",
        }


# ---------------------------------------------------------------------------------------------------------
# 1. Bytes.


def cv2_module():
    """OpenCV, imported the way every decoder of ours needs it: its decode-size guard
    (``OPENCV_IO_MAX_IMAGE_PIXELS``, read once when cv2 loads) at ``MAX_PIXELS_CEILING`` and its own log
    silenced (libpng / libjpeg warnings go through it). Importing this module already sets the guard."""
    global _CV2
    if _CV2 is None:  # once: the environment lookups below cost more than decoding a thumbnail
        os.environ.setdefault(_OPENCV_GUARD, str(MAX_PIXELS_CEILING))
        os.environ.setdefault("OPENCV_LOG_LEVEL", "SILENT")  # read when cv2 loads
        import cv2

        try:
            cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)
        except AttributeError:  # older builds without the logging submodule
            pass
        _CV2 = cv2
    return _CV2


_CV2 = None


def quiet_opencv() -> None:
    """Silence OpenCV's and FFmpeg's own stderr chatter ("PNG input buffer is incomplete", "moov atom not
    found"): each bad input must give exactly one line, ours. Also keep OpenCV single-threaded per call,
    because the callers already decode one image per worker thread."""
    os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")  # AV_LOG_QUIET; read when FFmpeg is first used
    cv2 = cv2_module()
    cv2.setNumThreads(1)


def read_file(path: str | os.PathLike, max_bytes: int = MAX_FILE_BYTES) -> bytes:
    """The bytes of a regular file, or BadInput saying why not (checked before opening, so that a FIFO
    never blocks and a socket never raises something obscure)."""
    try:
        info = os.stat(path)
    except OSError as err:
        raise BadInput(os_reason(err)) from None
    if stat.S_ISDIR(info.st_mode):
        raise BadInput("a folder, not an image file")
    if not stat.S_ISREG(info.st_mode):
        raise BadInput("not a regular file (a socket, FIFO or device cannot be read as an image)")
    if info.st_size == 0:
        raise BadInput("empty file (0 bytes)")
    if info.st_size > max_bytes:
        raise BadInput(f"file is {info.st_size / 2**20:.0f} MiB, over the {max_bytes / 2**20:.0f} MiB limit")
    try:
        return _read_all(path, info.st_size)
    except OSError as err:
        raise BadInput(os_reason(err)) from None


# Non-blocking: should a FIFO take the file's place between the check and the open, the open returns at once
# instead of waiting for a writer (on a regular file the flag does nothing). Binary and close-on-exec as
# Python's own open() would be.
_READ_FLAGS = os.O_RDONLY | getattr(os, "O_BINARY", 0) | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NONBLOCK", 0)


def _read_all(path: str | os.PathLike, expected: int) -> bytes:
    """The whole file, in one read when it still has the size ``stat`` gave. Plain os calls: Python's buffered
    file object costs five more system calls (fstat, ioctl, lseek, a read at the end), each a release of the
    GIL, which is most of the time of reading a thumbnail."""
    fd = os.open(path, _READ_FLAGS)
    try:
        data = os.read(fd, expected + 1)
        if len(data) == expected:  # the one extra byte asked for did not come: the end of the file
            return data
        parts = [data]  # the file changed since stat: read on to its end, as f.read() does
        while part := os.read(fd, 1 << 20):
            parts.append(part)
        return b"".join(parts)
    finally:
        os.close(fd)


def os_reason(err: OSError) -> str:
    """A few words for an OSError, without the path (the caller names the file)."""
    if err.errno == errno.ELOOP:
        return "symbolic link loop (too many levels of symbolic links)"
    if err.errno in (errno.EACCES, errno.EPERM):
        return "permission denied"
    if err.errno == errno.ENOENT:
        return "no such file (or a broken symbolic link)"
    return (err.strerror or str(err)).lower()


# Pillow reports oversized headers through the process-wide warnings machinery; reading a header is quick,
# so one lock keeps this module's own threads from interleaving their catch_warnings blocks.
_PIL_LOCK = threading.Lock()
# The formats OpenCV decodes whose headers Pillow reads (OpenCV picks its decoder by content, never by the
# name). Pillow's other readers accept almost any bytes (TGA has no signature) and are never asked.
_PIL_FORMATS = ("BMP", "DIB", "TIFF", "WEBP", "GIF", "SUN", "JPEG2000", "AVIF", "PPM")


def image_dimensions(data: bytes) -> tuple[int, int] | None:
    """(width, height) from the header of any format OpenCV decodes, without decoding pixels: PNG, JPEG, Radiance
    HDR, PNM / PAM / PFM here, the others through Pillow's lazy header reader (restricted to formats OpenCV
    decodes); None when unknown (``decode`` refuses such bytes). A JPEG or PNG whose header is malformed is
    BadInput. A header over Pillow's decompression-bomb limit is BadInput (over the limit), without touching
    Pillow's settings."""
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        if len(data) < 33 or data[8:16] != b"\x00\x00\x00\rIHDR":
            raise BadInput("not a valid PNG (no image header)")
        return struct.unpack(">II", data[16:24])
    if data[:2] == b"\xff\xd8":
        size = _jpeg_dimensions(data)
        if size is None:
            raise BadInput("not a valid JPEG (no frame header before the image data)")
        return size
    if data[:2] in (b"#?",):
        return _radiance_dimensions(data)
    if data[:1] == b"P" and data[1:2] in b"1234567Ff" and len(data) > 2:
        return _pnm_dimensions(data)
    try:
        from PIL import Image
    except ImportError:
        return None
    try:
        Image.init()
        formats = [f for f in _PIL_FORMATS if f in Image.OPEN]
        with _PIL_LOCK, warnings.catch_warnings(record=True):
            warnings.simplefilter("always", Image.DecompressionBombWarning)  # recorded, never printed
            with Image.open(io.BytesIO(data), formats=formats) as im:
                return im.size
    except Image.DecompressionBombError:
        raise BadInput(f"image is over {2 * (Image.MAX_IMAGE_PIXELS or 0) / 1e6:.0f} Mpixel by its header, "
                       f"over the limit") from None
    except Exception:  # noqa: BLE001 - any other failure just means "size unknown"
        return None


# JPEG start-of-frame markers carry the image size; C4 (DHT), C8 (JPG) and CC (DAC) share the range.
_SOF_MARKERS = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


def _jpeg_dimensions(data: bytes) -> tuple[int, int] | None:
    return _jpeg_header(data)[0]


def _jpeg_header(data: bytes) -> tuple[tuple[int, int] | None, list[tuple[int, int]]]:
    """The frame header's size, walking the markers as libjpeg does, and the stray byte ranges found on the way:
    bytes between segments are skipped up to the next 0xFF (libjpeg's "extraneous bytes before marker"), so they
    cannot hide the frame header. A frame header must be well formed (length 8 + 3 x components, precision
    8/12/16, 1 to 4 components)."""
    pos, n = 2, len(data)
    stray: list[tuple[int, int]] = []
    while pos + 4 <= n:
        if data[pos] != 0xFF:  # garbage between segments: libjpeg skips to the next marker
            nxt = data.find(b"\xff", pos)
            if nxt < 0:
                return None, stray
            stray.append((pos, nxt))
            pos = nxt
            continue
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in (0x00, 0x01, *range(0xD0, 0xD8)):  # stuffed byte or markers without a length
            pos += 2
            continue
        if marker in (0xD8, 0xD9, 0xDA):  # another SOI, EOI or start of scan before any frame header
            return None, stray
        length = struct.unpack(">H", data[pos + 2 : pos + 4])[0]
        if length < 2:
            return None, stray
        if marker in _SOF_MARKERS:
            if pos + 10 > n:
                return None, stray
            precision = data[pos + 4]
            height, width = struct.unpack(">HH", data[pos + 5 : pos + 9])
            components = data[pos + 9]
            if precision not in (8, 12, 16) or not 1 <= components <= 4 or length != 8 + 3 * components:
                return None, stray
            return (width, height), stray
        pos += 2 + length
    return None, stray


def _radiance_dimensions(data: bytes) -> tuple[int, int] | None:
    """Radiance HDR: text lines after ``#?RADIANCE`` / ``#?RGBE`` up to a blank line, then ``-Y H +X W`` (any
    of the eight orientations)."""
    head = data[:65536]
    end = head.find(b"\n\n")
    if end < 0:
        return None
    line = head[end + 2 :].split(b"\n", 1)[0].split()
    if len(line) != 4 or line[0][1:] not in (b"X", b"Y") or line[2][1:] not in (b"X", b"Y"):
        return None
    try:
        first, second = int(line[1]), int(line[3])
    except ValueError:
        return None
    return (second, first) if line[0][1:] == b"Y" else (first, second)


def _pnm_dimensions(data: bytes) -> tuple[int, int] | None:
    """PBM / PGM / PPM (P1-P6), PFM (PF, Pf): the first two numbers after the magic, comments skipped; PAM (P7):
    its WIDTH and HEIGHT lines."""
    head = data[:4096]
    if head[1:2] == b"7":
        fields = dict(line.split(None, 1) for line in head.split(b"ENDHDR")[0].splitlines()[1:]
                      if len(line.split(None, 1)) == 2 and not line.startswith(b"#"))
        try:
            return int(fields[b"WIDTH"]), int(fields[b"HEIGHT"])
        except (KeyError, ValueError):
            return None
    tokens = []
    for line in head[2:].splitlines():
        tokens.extend(line.split(b"#", 1)[0].split())
        if len(tokens) >= 2:
            break
    try:
        return int(tokens[0]), int(tokens[1])
    except (IndexError, ValueError):
        return None


# ---------------------------------------------------------------------------------------------------------
# 2. Decoding.


class _DecodeBudget:
    """Bytes of decoded pixels in flight across threads (``DECODE_BUDGET_BYTES``)."""

    def __init__(self, total: int):
        self.total, self.used = total, 0
        self.cond = threading.Condition()

    def acquire(self, amount: int) -> int:
        with self.cond:
            self.cond.wait_for(lambda: self.used == 0 or self.used + amount <= self.total)
            self.used += amount
        return amount

    def release(self, amount: int) -> None:
        with self.cond:
            self.used -= amount
            self.cond.notify_all()


_BUDGET = _DecodeBudget(DECODE_BUDGET_BYTES)


def check_pixels(width: int, height: int, max_pixels: int, what: str = "image") -> None:
    """BadInput when a ``width`` x ``height`` picture is empty or over ``max_pixels``: the one limit of every
    reader (image files, archive members, video frames), checked before the pixels are allocated."""
    if width <= 0 or height <= 0:
        raise BadInput(f"the header says the {what} is {width}x{height}")
    if width * height > max_pixels:
        raise BadInput(f"{what} is {width}x{height} ({width * height / 1e6:.0f} Mpixel), over the "
                       f"{max_pixels / 1e6:.0f} Mpixel limit")


def decode(data: bytes, pre: Preprocess) -> np.ndarray:
    """Image bytes -> H x W (grayscale model) or H x W x 3 BGR (colour model; OpenCV's channel order, which
    ``to_pixels`` turns into RGB) array at the file's depth: uint8, uint16 or float32.

    OpenCV's decoder applies the EXIF orientation, drops alpha (as Pillow's ``convert("RGB")`` does), expands
    palettes, replicates grayscale for RGB models, converts colour with ITU-R 601 weights for grayscale models
    and CMYK JPEGs by libjpeg; 16-bit PNGs and TIFFs keep their 16 bits. With ``pre.jpeg_draft``, large JPEGs
    are decoded at 1/2, 1/4 or 1/8 scale by libjpeg (DCT scaling) when the result still has twice the model's
    resolution: several times faster, and within about 1/255 of the full decoding once resized
    (tests/test_sources.py measures it).

    The size comes from the header before any pixel is decoded and must be within ``pre.max_pixels``; bytes
    whose header gives no size are refused, a decoded image whose size differs from its header is refused, and
    so is a float image with NaN or infinite values."""
    if not data:
        raise BadInput("empty file (0 bytes)")
    size = image_dimensions(data)
    if size is None:
        raise BadInput("cannot be decoded as an image (not an image format whose size can be read from its "
                       "header: truncated, corrupt, or not an image file)")
    width, height = size
    check_pixels(width, height, pre.max_pixels)
    if data[:2] == b"\xff\xd8":
        data = _without_stray_bytes(data)
    flags, reduce = _decode_flags(data, min(size), pre)
    image = _imdecode(data, flags, width * height * 12)  # the worst case: 3 channels of float32
    if image is None or image.size == 0:
        raise BadInput("cannot be decoded as an image (truncated, corrupt, or not an image file)")
    got = sorted(image.shape[:2])
    want = sorted((-(-width // reduce), -(-height // reduce)))
    if got != want:
        raise BadInput(f"the header says {width}x{height} but the decoder gave {image.shape[1]}x{image.shape[0]} "
                       "(corrupt or crafted file)")
    if image.dtype.kind == "f" and not np.isfinite(image).all():
        raise BadInput("contains NaN or infinite values")
    return image


def _without_stray_bytes(jpeg: bytes) -> bytes:
    """The JPEG without the bytes between its segments: dropped here, as libjpeg would, but without its
    "Corrupt JPEG data" line on stderr."""
    stray = _jpeg_header(jpeg)[1]
    if not stray:
        return jpeg
    keep, last = [], 0
    for begin, end in stray:
        keep.append(jpeg[last:begin])
        last = end
    return b"".join(keep) + jpeg[last:]


def _decode_flags(data: bytes, short_side: int, pre: Preprocess) -> tuple[int, int]:
    """(OpenCV imdecode flags, the JPEG scale denominator) for ``pre``: grayscale or colour, reduced JPEG
    decoding when ``pre.jpeg_draft`` allows it, the file's own bit depth kept otherwise."""
    cv2 = cv2_module()
    gray = pre.channels == 1
    if pre.jpeg_draft and data[:2] == b"\xff\xd8":
        reduce = jpeg_reduction(short_side, pre.image_size)
        if reduce > 1:
            return _REDUCED[(reduce, gray)](cv2), reduce
    # ANYDEPTH: keep 16-bit PNG / TIFF precision until after the resize
    return (cv2.IMREAD_GRAYSCALE if gray else cv2.IMREAD_COLOR) | cv2.IMREAD_ANYDEPTH, 1


def _imdecode(data: bytes, flags: int, worst_case: int) -> np.ndarray | None:
    """``cv2.imdecode`` within the decoded-bytes budget (``worst_case`` bytes reserved while it runs), its
    errors as BadInput."""
    cv2 = cv2_module()
    held = _BUDGET.acquire(worst_case) if worst_case >= UNBUDGETED_DECODE_BYTES else 0
    try:
        return cv2.imdecode(np.frombuffer(data, dtype=np.uint8), flags)
    except cv2.error as err:
        if "CV_IO_MAX_IMAGE" in str(err):
            raise BadInput(f"image is over the {MAX_PIXELS_CEILING / 1e6:.0f} Mpixel decoder limit") from None
        raise BadInput(f"cannot be decoded ({' '.join(str(err).split())[-120:]})") from None
    finally:
        if held:
            _BUDGET.release(held)


_REDUCED = {
    (2, True): lambda cv2: cv2.IMREAD_REDUCED_GRAYSCALE_2, (2, False): lambda cv2: cv2.IMREAD_REDUCED_COLOR_2,
    (4, True): lambda cv2: cv2.IMREAD_REDUCED_GRAYSCALE_4, (4, False): lambda cv2: cv2.IMREAD_REDUCED_COLOR_4,
    (8, True): lambda cv2: cv2.IMREAD_REDUCED_GRAYSCALE_8, (8, False): lambda cv2: cv2.IMREAD_REDUCED_COLOR_8,
}


def jpeg_reduction(short_side: int, target: int) -> int:
    """The libjpeg scale denominator ``decode`` uses: the largest of 8, 4, 2 that leaves the shorter side at
    least twice the model's size, else 1."""
    for factor in (8, 4, 2):
        if short_side // factor >= 2 * target:
            return factor
    return 1


# ---------------------------------------------------------------------------------------------------------
# 3. Geometry and depth: the uint8 pixels every stage shares.


def to_pixels(image: np.ndarray, pre: Preprocess, crop_box: tuple[int, int, int, int] | None = None) -> np.ndarray:
    """A decoded image or video frame (H x W grayscale or H x W x 3 BGR; uint8, uint16 or float) -> uint8
    [C, S, S] RGB: grayscale conversion, crop (``crop_box`` = (top, left, height, width) when a dataset gives
    one, else ``pre.crop``), resize at the source's depth, rounding to 8-bit levels, channel reorder."""
    return levels_to_pixels(to_levels(image, pre, crop_box)[None], pre)[0]


def to_levels(image: np.ndarray, pre: Preprocess, crop_box: tuple[int, int, int, int] | None = None) -> np.ndarray:
    """``to_pixels`` up to the channel reorder: uint8 S x S (one channel) or S x S x 3 (BGR, as decoded).
    Kept apart so that a caller preparing many images reorders them all in one ``levels_to_pixels``."""
    import cv2

    s = pre.image_size
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if image.ndim == 3 and pre.channels == 1:  # colour video frames for a grayscale model: convert first,
        image = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)  # as a grayscale decode does
    height, width = image.shape[:2]
    if crop_box is not None:
        top, left, ch, cw = crop_box
        image = image[top : top + ch, left : left + cw]
    elif pre.crop == "center" and height != width:
        side = min(height, width)
        top, left = (height - side) // 2, (width - side) // 2
        image = image[top : top + side, left : left + side]
    if image.shape[:2] != (s, s):
        shrink = image.shape[0] > s or image.shape[1] > s
        image = cv2.resize(image, (s, s), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
    return to_uint8(image)


def levels_to_pixels(levels: np.ndarray, pre: Preprocess) -> np.ndarray:
    """A stack of ``to_levels`` results, [N, S, S] (one channel) or [N, S, S, 3] (BGR) -> uint8 [N, C, S, S]
    RGB: one channel is replicated into every channel of the model."""
    if levels.ndim == 3:
        n, s = len(levels), pre.image_size
        return np.ascontiguousarray(np.broadcast_to(levels[:, None], (n, pre.channels, s, s)))
    return np.ascontiguousarray(levels[..., ::-1].transpose(0, 3, 1, 2))  # BGR NHWC -> RGB NCHW


def to_uint8(image: np.ndarray) -> np.ndarray:
    """The nearest 8-bit levels: every model is trained on 8-bit pixels. 16-bit v -> round(v * 255 / 65535)
    (exact integer arithmetic, never a tie), float v -> round(clip(v, 0, 1) * 255)."""
    if image.dtype == np.uint8:
        return image
    if image.dtype == np.uint16:
        return ((image.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)
    if image.dtype in (np.float32, np.float64):
        unit = np.clip(np.nan_to_num(image, nan=0.0), 0.0, 1.0)
        return np.rint(unit * 255.0).astype(np.uint8)
    raise BadInput(f"unsupported pixel type {image.dtype}")


def to_unit_float(pixels: np.ndarray) -> np.ndarray:
    """uint8 pixels (any shape) -> float32 in [0, 1], k / 255: the one value step of every stage.

    A float32 division, correctly rounded: the same values as the training loader's ``uint8 tensor.float() / 255``
    (a multiplication by float32(1/255) differs from it in the last bit for 126 of the 256 levels)."""
    pixels = np.asarray(pixels)
    if pixels.dtype != np.uint8:
        raise TypeError(f"to_unit_float takes uint8 pixels, not {pixels.dtype}")
    return np.divide(pixels, np.float32(255.0), dtype=np.float32)


# ---------------------------------------------------------------------------------------------------------
# The steps together.


def decode_pixels(data: bytes, pre: Preprocess, crop_box: tuple[int, int, int, int] | None = None) -> np.ndarray:
    """Encoded bytes -> uint8 [C, S, S] RGB (what the training loader stores), or BadInput."""
    return to_pixels(decode(data, pre), pre, crop_box)


def load_pixels(path: str | os.PathLike, pre: Preprocess) -> np.ndarray:
    """Read and decode one image file: uint8 [C, S, S] RGB, or BadInput."""
    return decode_pixels(read_file(path), pre)


def load_image(path: str | Path, pre: Preprocess) -> np.ndarray:
    """Read, decode and prepare one image file: float32 [C, S, S] RGB in [0, 1], or BadInput. What
    ``alitool encode`` feeds the model (before the value range)."""
    return to_unit_float(load_pixels(path, pre))


def prepare_frame(bgr: np.ndarray, pre: Preprocess) -> np.ndarray:
    """A video frame as OpenCV reads it (H x W x 3 BGR uint8) -> float32 [C, S, S] RGB in [0, 1]."""
    return to_unit_float(to_pixels(bgr, pre))
