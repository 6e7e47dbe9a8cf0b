"""Decode image files and prepare them exactly as the model was trained.

The paper's models see fixed-size square images with values in [0, 1] (Dumoulin et al. 2017, Appendix A:
SVHN and CIFAR10 32x32 RGB, CelebA and Tiny ImageNet 64x64 RGB; this project's digits 8x8 grayscale). A model
carries that recipe in its metadata (``ModelMeta``: image size, channels, value range), so ``Preprocess``
is built from the model and never retyped. The resize policy is the image-file datasets' one
(``alitool.data.imagefiles``): cut the central square, then resize it to the model's size (area averaging
when shrinking, bilinear when growing); images already at the model's size are untouched.

Every way an image file can be unusable (empty, truncated, not an image, unreadable, absurdly large) raises
``BadInput`` with a short reason; the caller skips the file and says so.
"""

from __future__ import annotations

import errno
import os
import stat
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from alitool.io import BadInput

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".pgm", ".ppm", ".pbm", ".pnm")
# A 20000x20000 RGB image is 1.2 GB decoded; refuse such files before decoding them, from their header.
DEFAULT_MAX_PIXELS = 64 * 1024 * 1024
MAX_FILE_BYTES = 512 * 1024 * 1024
CROP_POLICIES = ("center", "stretch")


@dataclass(frozen=True)
class Preprocess:
    """How to turn any picture into one model input: ``[channels, image_size, image_size]`` in [0, 1]."""

    image_size: int
    channels: int
    crop: str = "center"  # "center": the central square, resized; "stretch": the whole image, resized
    max_pixels: int = DEFAULT_MAX_PIXELS
    # Decode large JPEGs at 1/2, 1/4 or 1/8 scale (libjpeg DCT scaling) when that still leaves twice the
    # model's resolution: several times faster; the training datasets decode at full size (False).
    jpeg_draft: bool = True

    @staticmethod
    def from_meta(meta, max_pixels: int = DEFAULT_MAX_PIXELS, jpeg_draft: bool = True) -> Preprocess:
        """The training recipe carried by a model (``alitool.backends.ModelMeta``)."""
        data = meta.config.get("data", {}) if isinstance(meta.config, dict) else {}
        crop = data.get("crop", "center") if isinstance(data, dict) else "center"
        crop = crop if crop in CROP_POLICIES else "center"
        return Preprocess(meta.image_size, meta.channels, crop, max_pixels, jpeg_draft)

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.channels, self.image_size, self.image_size)


def quiet_opencv() -> None:
    """Silence OpenCV's and FFmpeg's own stderr chatter ("PNG input buffer is incomplete", "moov atom not
    found"): each bad input must give exactly one line, ours. Also keep OpenCV single-threaded per call,
    because the pipeline already decodes one image per worker thread."""
    os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")  # AV_LOG_QUIET; read when FFmpeg is first used
    import cv2

    try:
        cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)
    except AttributeError:  # older builds without the logging submodule
        pass
    cv2.setNumThreads(1)


def read_file(path: str | os.PathLike, max_bytes: int = MAX_FILE_BYTES) -> bytes:
    """The bytes of a regular file, or BadInput saying why not (checked before opening, so that a FIFO
    never blocks and a socket never raises something obscure)."""
    try:
        info = os.stat(path)
    except OSError as err:
        raise BadInput(os_reason(err)) from None
    if not stat.S_ISREG(info.st_mode):
        raise BadInput("not a regular file (a socket, FIFO or device cannot be read as an image)")
    if info.st_size == 0:
        raise BadInput("empty file (0 bytes)")
    if info.st_size > max_bytes:
        raise BadInput(f"file is {info.st_size / 2**20:.0f} MiB, over the {max_bytes / 2**20:.0f} MiB limit")
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as err:
        raise BadInput(os_reason(err)) from None


def os_reason(err: OSError) -> str:
    """A few words for an OSError, without the path (the caller names the file)."""
    if err.errno == errno.ELOOP:
        return "symbolic link loop (too many levels of symbolic links)"
    if err.errno in (errno.EACCES, errno.EPERM):
        return "permission denied"
    if err.errno == errno.ENOENT:
        return "no such file (or a broken symbolic link)"
    return (err.strerror or str(err)).lower()


def image_dimensions(data: bytes) -> tuple[int, int] | None:
    """(width, height) from a PNG or JPEG header without decoding pixels; other formats via Pillow's lazy
    header reader when it is installed; None when unknown."""
    if data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) >= 24 and data[12:16] == b"IHDR":
        return struct.unpack(">II", data[16:24])
    if data[:2] == b"\xff\xd8":
        return _jpeg_dimensions(data)
    try:
        import io

        from PIL import Image

        Image.MAX_IMAGE_PIXELS = None  # we apply our own limit
        with Image.open(io.BytesIO(data)) as im:
            return im.size
    except Exception:  # noqa: BLE001 - any failure just means "size unknown"; OpenCV decides next
        return None


# JPEG start-of-frame markers carry the image size; C4 (DHT), C8 (JPG) and CC (DAC) share the range.
_SOF_MARKERS = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


def _jpeg_dimensions(data: bytes) -> tuple[int, int] | None:
    pos, n = 2, len(data)
    while pos + 4 <= n:
        if data[pos] != 0xFF:
            return None
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in (0x01, *range(0xD0, 0xD9)):  # markers without a length
            pos += 2
            continue
        length = struct.unpack(">H", data[pos + 2 : pos + 4])[0]
        if marker in _SOF_MARKERS and pos + 9 <= n:
            height, width = struct.unpack(">HH", data[pos + 5 : pos + 9])
            return width, height
        if marker == 0xDA:  # start of scan before any frame header: not a valid JPEG
            return None
        pos += 2 + length
    return None


def decode_image(data: bytes, pre: Preprocess) -> np.ndarray:
    """Image bytes -> H x W (grayscale model) or H x W x 3 BGR (colour model; OpenCV's channel order, which
    ``prepare`` turns into RGB while it scales) array, uint8/uint16/float32.

    Alpha is dropped (as Pillow's ``convert("RGB")`` does), grayscale is replicated for RGB models, colour
    is converted with ITU-R 601 weights for grayscale models, CMYK JPEGs are converted by libjpeg, and 16-bit
    PNGs keep their 16 bits. With ``pre.jpeg_draft``, large JPEGs are decoded at 1/2, 1/4 or 1/8 scale by
    libjpeg (DCT scaling) when the result still has twice the model's resolution: several times faster, and
    within about 1/255 of the full decoding once resized (tests/test_sources.py measures it)."""
    import cv2

    size = image_dimensions(data)
    if size is not None:
        width, height = size
        if width == 0 or height == 0:
            raise BadInput(f"the header says the image is {width}x{height}")
        if width * height > pre.max_pixels:
            raise BadInput(
                f"image is {width}x{height} ({width * height / 1e6:.0f} Mpixel), over the "
                f"{pre.max_pixels / 1e6:.0f} Mpixel limit (--max-megapixels)"
            )
    gray = pre.channels == 1
    flags = cv2.IMREAD_GRAYSCALE if gray else cv2.IMREAD_COLOR
    if pre.jpeg_draft and size is not None and data[:2] == b"\xff\xd8":
        reduce = _jpeg_reduction(min(size), pre.image_size)
        if reduce > 1:
            flags = _REDUCED[(reduce, gray)](cv2)
    if flags in (cv2.IMREAD_GRAYSCALE, cv2.IMREAD_COLOR):
        flags |= cv2.IMREAD_ANYDEPTH  # keep 16-bit PNG / TIFF precision
    try:
        image = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), flags)
    except cv2.error as err:
        raise BadInput(f"cannot be decoded ({str(err).strip().splitlines()[-1][:80]})") from None
    if image is None or image.size == 0:
        raise BadInput("cannot be decoded as an image (truncated, corrupt, or not an image file)")
    return image


_REDUCED = {
    (2, True): lambda cv2: cv2.IMREAD_REDUCED_GRAYSCALE_2, (2, False): lambda cv2: cv2.IMREAD_REDUCED_COLOR_2,
    (4, True): lambda cv2: cv2.IMREAD_REDUCED_GRAYSCALE_4, (4, False): lambda cv2: cv2.IMREAD_REDUCED_COLOR_4,
    (8, True): lambda cv2: cv2.IMREAD_REDUCED_GRAYSCALE_8, (8, False): lambda cv2: cv2.IMREAD_REDUCED_COLOR_8,
}


def _jpeg_reduction(short_side: int, target: int) -> int:
    for factor in (8, 4, 2):
        if short_side // factor >= 2 * target:
            return factor
    return 1


_SCALE = {np.dtype(np.uint8): 1 / 255, np.dtype(np.uint16): 1 / 65535, np.dtype(np.float32): 1.0,
          np.dtype(np.float64): 1.0}


def prepare(image: np.ndarray, pre: Preprocess) -> np.ndarray:
    """An image as OpenCV gives it (H x W grayscale or H x W x 3 BGR; uint8, uint16 or float) -> float32
    [C, S, S] RGB in [0, 1]: grayscale conversion, central square, resize, then one pass that reorders the
    channels and scales (no intermediate copies: on 32x32 inputs the copies cost as much as the decoding)."""
    import cv2

    s = pre.image_size
    if image.ndim == 3 and pre.channels == 1:  # colour video frames for a grayscale model: convert first,
        image = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)  # as a grayscale decode does
    height, width = image.shape[:2]
    if pre.crop == "center" and height != width:  # the central square, as the image-file datasets do
        side = min(height, width)
        top, left = (height - side) // 2, (width - side) // 2
        image = image[top : top + side, left : left + side]
    if image.shape[:2] != (s, s):
        shrink = image.shape[0] > s or image.shape[1] > s
        image = cv2.resize(image, (s, s), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
    scale = _SCALE.get(image.dtype)
    if scale is None:
        raise BadInput(f"unsupported pixel type {image.dtype}")
    if image.ndim == 2:
        source = np.broadcast_to(image, (pre.channels, s, s))
    else:
        source = image[:, :, ::-1].transpose(2, 0, 1)  # BGR HWC -> RGB CHW, a view
    out = np.empty((pre.channels, s, s), dtype=np.float32)
    np.multiply(source, np.float32(scale), out=out, casting="unsafe")
    if scale == 1.0:  # float images (TIFF, EXR) may hold values outside [0, 1]
        np.clip(out, 0.0, 1.0, out=out)
    return out


def load_image(path: str | Path, pre: Preprocess) -> np.ndarray:
    """Read, decode and prepare one image file: float32 [C, S, S] RGB in [0, 1], or BadInput."""
    return prepare(decode_image(read_file(path), pre), pre)


def prepare_frame(bgr: np.ndarray, pre: Preprocess) -> np.ndarray:
    """A video frame as OpenCV reads it (H x W x 3 BGR uint8) -> float32 [C, S, S] RGB in [0, 1]."""
    return prepare(bgr, pre)
