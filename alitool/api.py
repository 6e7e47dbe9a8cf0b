"""The Python API: ``alitool.load(path)`` -> a ``Model`` that encodes, decodes, reconstructs, interpolates and
samples, on any backend (PyTorch checkpoint, ONNX Runtime, TensorRT), with the CLI's own preprocessing.

    import alitool
    model = alitool.load("runs/digits/export")      # run folder, checkpoint.pt, .onnx / export folder, .engine
    z = model.encode("digit_pngs/")                 # float32 [N, latent_dim], the rows `alitool encode` writes
    images = model.decode(z)                        # float32 [N, C, H, W] in [0, 1]

Inputs ``x`` of ``encode`` / ``reconstruct`` / ``interpolate`` (docs/python.md has the table):

- paths (str / os.PathLike; one or a list): image files, folders, globs, .txt lists, videos and ``clip.mp4@N``
  frames, exactly the SOURCES of ``alitool encode``, decoded by the encode path itself (``decode_stream``), so
  the rows are the CLI's rows; an unusable input is an error here (the CLI skips it);
- uint8 pixels in RGB order: one image H x W or H x W x C (C = 1, 3, or 4 with alpha dropped), a batch
  N x H x W x C, or a list of such images of any sizes; uint16 pixels too (16-bit levels);
- PIL images (one or a list), EXIF orientation applied as for files;
- float arrays [N, C, S, S] (or one [C, S, S]) already prepared and in the model's value range.

Pixels go through the contract's ``to_pixels`` (crop, resize, 8-bit rounding) and ``to_unit_float``, then
``to_model_range``: the one preprocessing of training, INT8 calibration and the CLI (alitool.contract.preprocess).
Model calls are the encode path's fixed-size batches (``padded_calls``). No torch here: a checkpoint is opened by
``load_backend``'s lazy dispatch to the PyTorch backend, and only then is torch imported.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator
from contextlib import closing
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from alitool.contract.meta import to_model_range, to_unit_range
from alitool.contract.preprocess import Preprocess, to_pixels, to_uint8, to_unit_float
from alitool.errors import UserError

if TYPE_CHECKING:
    from alitool.backends import Backend
    from alitool.contract.meta import ModelMeta

__all__ = ["Model", "load", "to_uint8_images"]

DEFAULT_BATCH_SIZE = 64
RANGE_TOLERANCE = 1e-5  # float inputs may leave the value range by rounding, never by more


def load(path: str | os.PathLike | None = None, backend: str = "auto", device: str = "auto", *,
         batch_size: int = DEFAULT_BATCH_SIZE, workers: int = 2) -> Model:
    """Open a model: a run folder, a checkpoint .pt, an .onnx file or export folder, or a TensorRT engine
    (``backend`` "auto" picks the runtime from the file; "torch", "onnxruntime"/"onnx", "tensorrt"/"trt" force
    one). ``device``: "auto", "cpu", "cuda", "cuda:N". Without ``path``: the default model of the CLI for that
    backend (``alitool.runs.default_model``: the newest export under ./runs, else the newest checkpoint).
    ``batch_size`` is the rows of every model call (the last one zero-padded); ``workers`` the threads that
    decode files. Every problem is a ``UserError`` with one line."""
    from alitool.backends.opening import open_model
    from alitool.runs import resolve_model

    model_path = resolve_model(path, backend=backend)
    return Model(open_model(model_path, backend, device), model_path, batch_size=batch_size, workers=workers)


class Model:
    """A loaded ALI model (``alitool.load``). Outputs always have a batch axis, one row per input image; images
    come back float32 [N, C, H, W] in [0, 1] (RGB, or one channel), or uint8 [N, H, W, C] with ``uint8=True``."""

    def __init__(self, backend: Backend, path: str | os.PathLike = "", *, batch_size: int = DEFAULT_BATCH_SIZE,
                 workers: int = 2):
        if batch_size < 1:
            raise UserError(f"batch_size must be at least 1, not {batch_size}")
        self.backend = backend
        self.path = Path(path)
        self.batch_size = batch_size
        self.workers = max(1, int(workers))

    # ---- what the model is --------------------------------------------------------------------------------

    @property
    def meta(self) -> ModelMeta:
        """What the model expects and gives: image_size, channels, value_range, latent_dim, feature_dim, y_dim ..."""
        return self.backend.meta

    @property
    def runtime(self) -> str:
        """"torch", "onnxruntime" or "tensorrt"."""
        return self.backend.name

    def describe(self) -> str:
        """The CLI's one line: ``model: <path> (<runtime>, <size>, latent <d>)``."""
        from alitool.backends.opening import describe_model

        return describe_model(self.path, self.backend)

    def __repr__(self) -> str:
        meta = self.meta
        return (f"<alitool.Model {self.path} ({self.runtime}, {meta.image_size}x{meta.image_size}x{meta.channels}, "
                f"latent {meta.latent_dim})>")

    # ---- the operations -----------------------------------------------------------------------------------

    def encode(self, x: Any, kind: str = "mean", y: Any = None) -> np.ndarray:
        """float32 [N, D]: one row per input image. ``kind`` "mean": the posterior mean z_mean (D = latent_dim);
        "z": a sample of q(z|x); "paper": the section 4.3 SVM features (D = feature_dim; not in INT8 files)."""
        from alitool.backends import check_kind

        check_kind(kind)
        backend = self.backend
        return self._map(lambda images, cond=None: backend.encode(images, kind=kind, y=cond), self._chunks(x), y)

    def decode(self, z: Any, y: Any = None, uint8: bool = False) -> np.ndarray:
        """Images G_x(z) of latent codes z [N, latent_dim] (or one [latent_dim]): float32 [N, C, H, W] in [0, 1],
        or with ``uint8=True`` uint8 [N, H, W, C] RGB (C = 1 for grayscale models)."""
        z = self._latents(z)
        chunks = (z[i : i + self.batch_size] for i in range(0, len(z), self.batch_size))
        images = self._map(self.backend.decode, chunks, y)
        return self._pictures(images, uint8)

    def reconstruct(self, x: Any, y: Any = None, uint8: bool = False) -> np.ndarray:
        """x -> z_mean -> G_x(z): the reconstructions of the input images, as ``decode`` returns them."""
        self._need_decoder("reconstruct")
        backend = self.backend

        def round_trip(images, cond=None):
            return backend.decode(np.asarray(backend.encode(images, kind="mean", y=cond)), y=cond)

        return self._pictures(self._map(round_trip, self._chunks(x), y), uint8)

    def interpolate(self, a: Any, b: Any, steps: int = 8, y: Any = None, uint8: bool = False) -> np.ndarray:
        """Decodings of z(t) = (1 - t) z(a) + t z(b) for ``steps`` values of t from 0 to 1 (both ends included;
        z the posterior mean), as ``decode`` returns them: [steps, C, H, W]. ``a`` and ``b``: one image each."""
        self._need_decoder("interpolate")
        if steps < 2:
            raise UserError(f"steps must be at least 2 (both ends), not {steps}")
        ends = []
        for name, image in (("a", a), ("b", b)):
            z = self.encode(image, y=y)
            if len(z) != 1:
                raise UserError(f"interpolate: {name} must be one image, not {len(z)} (a folder or a batch?)")
            ends.append(z[0])
        t = np.linspace(0.0, 1.0, steps, dtype=np.float32)[:, None]
        return self.decode((1 - t) * ends[0][None] + t * ends[1][None], y=y, uint8=uint8)

    def sample(self, n: int = 64, seed: int | None = None, y: Any = None, uint8: bool = False) -> np.ndarray:
        """Decodings of ``n`` draws z ~ N(0, I) from the prior, as ``decode`` returns them. A ``seed`` gives the
        same draws as ``alitool sample --seed``; None draws fresh ones."""
        self._need_decoder("sample")
        if n < 1:
            raise UserError(f"n must be at least 1, not {n}")
        z = np.random.default_rng(seed).standard_normal((n, self.meta.latent_dim)).astype(np.float32)
        return self.decode(z, y=y, uint8=uint8)

    def preprocess(self, x: Any) -> np.ndarray:
        """What the model is fed for ``x``: float32 [N, C, S, S] in the model's value range."""
        chunks = list(self._chunks(x))
        return np.concatenate(chunks) if chunks else np.zeros((0, *self._pre().shape), np.float32)

    @staticmethod
    def to_uint8(images: np.ndarray) -> np.ndarray:
        """float32 images [N, C, H, W] in [0, 1] -> uint8 [N, H, W, C] RGB (``to_uint8_images``)."""
        return to_uint8_images(images)

    def to_pil(self, images: np.ndarray) -> list:
        """Images (float32 [N, C, H, W] in [0, 1] or uint8 [N, H, W, C]) -> PIL images ("L" or "RGB")."""
        from PIL import Image

        pixels = to_uint8_images(images)
        return [Image.fromarray(p[:, :, 0] if p.shape[2] == 1 else p) for p in pixels]

    # ---- inputs -------------------------------------------------------------------------------------------

    def _pre(self) -> Preprocess:
        meta = self.meta
        if not meta.image_size:
            raise UserError(f"model {meta.name!r} takes {meta.channels}-D vectors, not images")
        if not meta.has_encoder:
            raise UserError(f"{self.path}: this model has no encoder (a decoder-only file such as decoder.onnx); "
                            "encoding needs one: pass the run folder, its export folder or encoder.onnx")
        return Preprocess.from_meta(meta)

    def _need_decoder(self, what: str) -> None:
        if not self.meta.has_decoder:
            raise UserError(f"{self.path}: this model has no decoder (an encoder-only file such as encoder.onnx); "
                            f"{what} needs one: pass the run folder, its export folder or decoder.onnx")

    def _chunks(self, x: Any) -> Iterator[np.ndarray]:
        """``x`` as float32 arrays [<= batch_size, C, S, S] in the model's value range, in input order."""
        pre = self._pre()
        value_range = self.meta.value_range
        if _is_path(x) or (_is_sequence(x) and len(x) > 0 and all(_is_path(i) for i in x)):
            yield from self._file_chunks([os.fspath(x)] if _is_path(x) else [os.fspath(i) for i in x], pre)
            return
        if isinstance(x, np.ndarray) and x.dtype.kind == "f" or _is_float_tensor(x):
            images = self._float_images(np.asarray(x), pre)
            for start in range(0, len(images), self.batch_size):
                yield images[start : start + self.batch_size]
            return
        images = _pixel_images(x)
        for start in range(0, len(images), self.batch_size):
            pixels = [to_pixels(image, pre) for image in images[start : start + self.batch_size]]
            yield to_model_range(to_unit_float(np.stack(pixels)), value_range)

    def _file_chunks(self, sources: list[str], pre: Preprocess) -> Iterator[np.ndarray]:
        """The encode path's own decoding and batches (``decode_stream`` -> ``batches``): the CLI's rows."""
        from alitool.encoding.batching import batches
        from alitool.encoding.decoding import decode_stream
        from alitool.io.sources import expand_sources

        def fail(skipped) -> None:
            raise UserError(f"{skipped.source}: {skipped.reason}")

        def notice(item) -> None:
            logging.getLogger("alitool").warning("warning: %s: %s", item.source, item.message)

        rows = 0
        stream = decode_stream(expand_sources(sources), pre, self.workers)
        try:
            for batch in batches(stream, pre, self.batch_size, self.meta.value_range, fail, notice):
                rows += batch.count
                yield batch.images[: batch.count]
        finally:
            stream.close()
        if rows == 0:
            raise UserError(f"no image or video frame in {', '.join(sources)}")

    def _float_images(self, x: np.ndarray, pre: Preprocess) -> np.ndarray:
        shape = pre.shape
        if x.ndim == 3 and x.shape == shape:
            x = x[None]
        if x.ndim != 4 or x.shape[1:] != shape:
            c, s = shape[0], shape[1]
            raise UserError(f"float input of shape {tuple(x.shape)}: this model takes float [N, {c}, {s}, {s}] (NCHW) "
                            f"already in its value range, or uint8 pixels H x W x C of any size")
        x = np.ascontiguousarray(x, dtype=np.float32)
        if not np.isfinite(x).all():
            raise UserError("float input with NaN or infinite values")
        low, high = self.meta.value_range
        tolerance = RANGE_TOLERANCE * (high - low)
        if x.size and (x.min() < low - tolerance or x.max() > high + tolerance):
            found = f"values from {x.min():g} to {x.max():g}"
            if (low, high) == (0.0, 1.0):
                raise UserError(f"float input outside [0, 1] ({found}): pass uint8 pixels or divide by 255")
            raise UserError(f"float input outside [{low:g}, {high:g}], this model's value range ({found}): pass "
                            f"uint8 pixels, or map [0, 1] pixels p to p * {high - low:g} + {low:g}")
        return x

    # ---- outputs ------------------------------------------------------------------------------------------

    def _latents(self, z: Any) -> np.ndarray:
        if not self.meta.has_decoder:
            self._need_decoder("decode")
        z = np.asarray(z)
        d = self.meta.latent_dim
        if z.dtype.kind not in "fiu":
            raise UserError(f"z of type {z.dtype}: expected float32 [N, {d}]")
        if z.ndim == 1:
            z = z[None]
        if z.ndim != 2 or z.shape[1] != d:
            raise UserError(f"z of shape {tuple(z.shape)}: this model takes [N, {d}] (or one [{d}])")
        z = np.ascontiguousarray(z, dtype=np.float32)
        if not np.isfinite(z).all():
            raise UserError("z with NaN or infinite values")
        return z

    def _map(self, fn: Callable[..., np.ndarray], chunks: Iterator[np.ndarray], y: Any) -> np.ndarray:
        """``fn`` over the rows of ``chunks`` in fixed-size padded batches (``padded_calls``), with the rows of
        ``y`` beside them for a conditional model (one y [y_dim] is every row's)."""
        from alitool.encoding.batching import padded_calls

        cond = None if y is None else np.asarray(y, dtype=np.float32)
        if cond is not None and cond.ndim not in (1, 2):
            raise UserError(f"y of shape {tuple(cond.shape)}: expected [N, y_dim], or one [y_dim] for every input")
        outputs, start = [], 0
        with closing(chunks):  # an error here stops the decoding threads at once
            for chunk in chunks:
                n = len(chunk)
                if cond is None:
                    outputs.append(padded_calls(fn, chunk, self.batch_size))
                else:
                    rows = np.broadcast_to(cond, (n, cond.shape[0])) if cond.ndim == 1 else cond[start : start + n]
                    if cond.ndim != 1 and len(rows) != n:
                        raise UserError(f"y has {len(cond)} rows, fewer than the inputs")
                    outputs.append(padded_calls(fn, (chunk, rows), self.batch_size))
                start += n
        if cond is not None and cond.ndim == 2 and len(cond) != start:
            raise UserError(f"y has {len(cond)} rows for {start} inputs")
        if not outputs:
            raise UserError("no input: nothing to run the model on")
        return np.concatenate(outputs).astype(np.float32, copy=False)

    def _pictures(self, images: np.ndarray, uint8: bool) -> np.ndarray:
        if not self.meta.image_size:  # a vector model (the 2-D experiment): points, not pictures
            return images
        unit = to_unit_range(images, self.meta.value_range)
        return to_uint8_images(unit) if uint8 else unit


def to_uint8_images(images: np.ndarray) -> np.ndarray:
    """float32 images [N, C, H, W] (or one [C, H, W]) in [0, 1] -> uint8 [N, H, W, C] RGB, rounded to the nearest
    8-bit level (the contract's ``to_uint8``); uint8 [N, H, W, C] is returned as it is."""
    images = np.asarray(images)
    if images.dtype == np.uint8:
        return images if images.ndim == 4 else images[None]
    if images.dtype.kind != "f" or images.ndim not in (3, 4):
        raise UserError(f"images of type {images.dtype} and shape {tuple(images.shape)}: expected float [N, C, H, W] "
                        f"in [0, 1]")
    images = images[None] if images.ndim == 3 else images
    return np.ascontiguousarray(to_uint8(np.moveaxis(images.astype(np.float32, copy=False), 1, -1)))


# ---- inputs that are not files ----------------------------------------------------------------------------------


def _is_path(x: Any) -> bool:
    return isinstance(x, str | os.PathLike)


def _is_sequence(x: Any) -> bool:
    return isinstance(x, list | tuple)


def _is_pil(x: Any) -> bool:
    try:
        from PIL import Image
    except ImportError:
        return False
    return isinstance(x, Image.Image)


def _is_float_tensor(x: Any) -> bool:
    """An array-like that is not NumPy (a CPU torch tensor) holding floats."""
    if isinstance(x, np.ndarray) or _is_pil(x) or not hasattr(x, "__array__"):
        return False
    return np.asarray(x).dtype.kind == "f"


def _pixel_images(x: Any) -> list[np.ndarray]:
    """Pixel inputs -> a list of images as the contract's ``to_pixels`` takes them: H x W, or H x W x 3 in
    OpenCV's BGR order (what ``decode`` gives for a file), at 8 or 16 bits."""
    if _is_pil(x):
        return [_from_pil(x)]
    if _is_sequence(x):
        if not x:
            raise UserError("an empty list: nothing to run the model on")
        if any(_is_path(i) for i in x):
            raise UserError("a list of paths or a list of images (arrays, PIL images), not both")
        images = []
        for i, item in enumerate(x):
            if _is_pil(item):
                images.append(_from_pil(item))
                continue
            item = np.asarray(item)
            _check_pixel_dtype(item)
            if item.ndim not in (2, 3):
                raise UserError(f"item {i} of shape {tuple(item.shape)}: a list holds single images, H x W or "
                                f"H x W x C")
            images.append(_to_bgr(item))
        return images
    if not hasattr(x, "__array__"):
        raise UserError(f"cannot read {type(x).__name__} as images: pass paths, a folder, uint8 arrays (H x W x C "
                        f"RGB), PIL images, or float arrays [N, C, H, W] in the model's range")
    x = np.asarray(x)
    _check_pixel_dtype(x)
    if x.ndim == 2:
        return [_to_bgr(x)]
    if x.ndim == 3:
        if x.shape[2] not in (1, 3, 4):
            raise UserError(f"uint8 input of shape {tuple(x.shape)}: one image is H x W x C with C = 1, 3 or 4 "
                            f"(RGB order); a batch of grayscale images needs a channel axis: N x H x W x 1")
        return [_to_bgr(x)]
    if x.ndim == 4:
        return [_to_bgr(image) for image in x]
    raise UserError(f"uint8 input of shape {tuple(x.shape)}: expected H x W, H x W x C or N x H x W x C (RGB)")


def _check_pixel_dtype(x: np.ndarray) -> None:
    if x.dtype in (np.uint8, np.uint16):
        return
    if x.dtype.kind == "f":
        raise UserError(f"float input of shape {tuple(x.shape)} in a list: pass float images as one array "
                        f"[N, C, H, W] in the model's range, or uint8 pixels")
    hint = "; convert with .astype(np.uint8) if they are 0..255 levels" if x.dtype.kind in "iub" else ""
    raise UserError(f"unsupported pixel type {x.dtype}: pass uint8 pixels (H x W x C, RGB) or float [N, C, H, W] in "
                    f"the model's range{hint}")


def _to_bgr(image: np.ndarray) -> np.ndarray:
    """One H x W [x C] RGB(A) image -> H x W or H x W x 3 BGR, contiguous (alpha dropped, as the decoder does)."""
    if image.ndim == 3:
        channels = image.shape[2]
        if channels not in (1, 3, 4):
            raise UserError(f"an image with {channels} channels: expected 1 (grayscale), 3 (RGB) or 4 (RGBA)")
        image = image[:, :, 0] if channels == 1 else image[:, :, 2::-1]  # RGB(A) -> BGR
    if min(image.shape[:2]) < 1:
        raise UserError(f"an empty image of shape {tuple(image.shape)}")
    return np.ascontiguousarray(image)


def _from_pil(image) -> np.ndarray:
    """A PIL image -> H x W or H x W x 3 BGR: EXIF orientation applied, palettes expanded, alpha dropped."""
    from PIL import ImageOps

    image = ImageOps.exif_transpose(image)
    if image.mode in ("I;16", "I;16B", "I;16L"):
        return np.asarray(image).astype(np.uint16)
    if image.mode in ("1", "L", "LA", "La"):
        return np.ascontiguousarray(np.asarray(image.convert("L")))
    if image.mode in ("I", "F"):
        raise UserError(f"a PIL image of mode {image.mode} (32-bit): convert it to 'L' or 'RGB' first")
    return _to_bgr(np.asarray(image.convert("RGB")))
