"""The paper's pictures from any model (checkpoint, ONNX or TensorRT): reconstructions (Dumoulin et al. 2017,
figures 2-5: originals and their reconstructions x -> z -> x in alternating columns), latent interpolations
(figure 6: originals at both ends, decodings of linearly interpolated z between them) and samples z ~ N(0, I).

Reconstructions decode the posterior mean mu(x) by default, or with ``posterior="sample"`` a draw z ~ q(z | x)
(section 3's reparametrisation), as the paper's figures do. The draw is the backend's own ``encode(kind="z")``,
the one ``alitool encode --features z`` uses: PyTorch's generator for a checkpoint, the backend's NumPy
generator (``contract.meta.sample_posterior``) for ONNX Runtime and TensorRT; seeding it is the caller's.

Grids are drawn by ``alitool.viz``; model calls go through the encode path's fixed-size batches
(``alitool.encoding``); video output is streamed frame by frame, so memory stays O(batch).
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from alitool.contract.meta import to_model_range, to_unit_range
from alitool.contract.preprocess import Preprocess, load_image, prepare_frame
from alitool.encoding.batching import call_model, padded_calls
from alitool.encoding.encode import model_batches, preprocess_for
from alitool.encoding.report import RunReport
from alitool.errors import UserError
from alitool.io import BadInput
from alitool.io.sources import parse_frame_ref
from alitool.io.video import VIDEO_EXTENSIONS, AtomicVideoWriter, read_frame

PICTURE_EXTENSIONS = (".png",)
VIDEO_HEIGHT = 256  # side-by-side videos are enlarged (nearest neighbour) to about this height


def require_decoder(backend, model: str | Path, what: str) -> None:
    if not backend.meta.has_decoder:
        raise UserError(f"{model}: this model has no decoder (an encoder-only file such as encoder.onnx); {what} "
                        "needs one: pass the run folder, its export folder or decoder.onnx")


def load_one(text: str, pre: Preprocess) -> np.ndarray:
    """One image file or video frame (``clip.mp4@120``; a bare video means its frame 0) -> [C, S, S] in [0, 1];
    a bad one is fatal here (one line), because a pair with a hole in it has no meaning."""
    ref = parse_frame_ref(text)
    if ref is None and Path(text).suffix.lower() in VIDEO_EXTENSIONS:
        ref = (text, 0)
    try:
        if ref is not None:
            return prepare_frame(read_frame(*ref), pre)
        return load_image(text, pre)
    except BadInput as err:
        raise UserError(f"{text}: {err}") from None


def encode_kind(posterior: str) -> str:
    """The backend's ``encode`` kind for a reconstruction from the posterior mean or a posterior sample."""
    from alitool.viz import POSTERIORS

    if posterior not in POSTERIORS:
        raise UserError(f"posterior must be {' or '.join(POSTERIORS)}, not {posterior!r}")
    return "mean" if posterior == "mean" else "z"


def reconstruction_grid(backend, sources: Iterable[str], out: str | Path, *, n: int = 32, batch_size: int = 64,
                        workers: int = 2, stride: int = 1, pairs_per_row: int = 8, posterior: str = "mean",
                        caption: str | None = None, report: RunReport | None = None) -> RunReport:
    """The first ``n`` inputs and their reconstructions, paired in alternating columns, as one PNG under a caption
    that names the ``posterior`` they decode (``caption``: other words for it, e.g. with the seed)."""
    from alitool.viz import posterior_caption, save_reconstruction_grid

    kind = encode_kind(posterior)
    report = report or RunReport()
    start = time.perf_counter()
    originals, recons = [], []
    for batch in model_batches(backend, sources, report, batch_size=batch_size, workers=workers, stride=stride,
                               limit=n):
        x_rec = call_model(backend.decode, call_model(backend.encode, batch.images, kind=kind))
        originals.append(batch.images[: batch.count].copy())
        recons.append(x_rec[: batch.count])
    if not originals:
        raise UserError(f"nothing to reconstruct: no usable image or frame ({len(report.skipped)} skipped)")
    vr = backend.meta.value_range
    x, r = (to_unit_range(np.concatenate(a), vr) for a in (originals, recons))
    report.rows = len(x)
    save_reconstruction_grid(out, x, r, pairs_per_row, caption or posterior_caption(posterior))
    report.seconds = time.perf_counter() - start
    return report


def reconstruction_video(backend, sources: Iterable[str], out: str | Path, *, batch_size: int = 64,
                         workers: int = 2, stride: int = 1, fps: float = 0.0, posterior: str = "mean",
                         report: RunReport | None = None) -> RunReport:
    """Every frame (or image) next to its reconstruction from the ``posterior`` mean or a sample, as a video
    written atomically. Frames carry no caption: a strip of text would take a good part of a two-image frame."""
    import cv2

    from alitool.viz import reconstruction_picture

    kind = encode_kind(posterior)
    report = report or RunReport()
    start = time.perf_counter()
    writer: AtomicVideoWriter | None = None
    vr = backend.meta.value_range
    try:
        for batch in model_batches(backend, sources, report, batch_size=batch_size, workers=workers,
                                   stride=stride):
            x_rec = call_model(backend.decode, call_model(backend.encode, batch.images, kind=kind))
            for i in range(batch.count):
                original, rebuilt = (to_unit_range(a[i : i + 1], vr) for a in (batch.images, x_rec))
                tile = reconstruction_picture(original, rebuilt, pairs_per_row=1)
                scale = max(1, VIDEO_HEIGHT // tile.shape[0])
                frame = cv2.resize(tile, None, fx=scale, fy=scale, interpolation=cv2.INTER_NEAREST)
                frame = frame[: frame.shape[0] // 2 * 2, : frame.shape[1] // 2 * 2]  # codecs want even sizes
                if writer is None:
                    rate = fps or _source_fps(batch.records[i].source, stride)
                    writer = AtomicVideoWriter(out, rate, (frame.shape[1], frame.shape[0]))
                writer.write(frame)
                report.rows += 1
        if writer is None:
            raise UserError(f"nothing to reconstruct: no usable image or frame ({len(report.skipped)} skipped)")
        writer.close()
    except BaseException:
        if writer is not None:
            writer.abort()
        raise
    report.seconds = time.perf_counter() - start
    return report


def _source_fps(source: str, stride: int) -> float:
    """The output frame rate: the source video's rate divided by the stride; 10 fps for image sequences."""
    if Path(source).suffix.lower() not in VIDEO_EXTENSIONS:
        return 10.0
    import cv2

    cap = cv2.VideoCapture(source)
    fps = cap.get(cv2.CAP_PROP_FPS) if cap.isOpened() else 0.0
    cap.release()
    return fps / stride if fps and fps > 0 else 25.0


def interpolation_grid(backend, endpoints: list[str], out: str | Path, *, steps: int = 8,
                       batch_size: int = 64) -> int:
    """Rows of [x1, decode(z(t)) for t in linspace(0, 1, steps), x2] for each pair (x1, x2) of ``endpoints``,
    with z(t) = (1 - t) z1 + t z2 and z the posterior mean. Returns the number of rows."""
    from alitool.viz import make_grid, save_png

    if len(endpoints) < 2 or len(endpoints) % 2:
        raise UserError(f"interpolate takes pairs of images or frames (A B [C D ...]); got {len(endpoints)}")
    if steps < 2:
        raise UserError(f"--steps must be at least 2 (both ends), not {steps}")
    pre = preprocess_for(backend)
    vr = backend.meta.value_range
    x = to_model_range(np.stack([load_one(text, pre) for text in endpoints]), vr)
    z = padded_calls(lambda b: backend.encode(b, kind="mean"), x, batch_size)
    z1, z2 = z[0::2], z[1::2]
    t = np.linspace(0.0, 1.0, steps, dtype=np.float32)[None, :, None]
    path = ((1 - t) * z1[:, None] + t * z2[:, None]).reshape(-1, z.shape[1])
    decoded = padded_calls(backend.decode, path, batch_size).reshape(len(z1), steps, *pre.shape)
    ends = x.reshape(len(z1), 2, *pre.shape)
    rows = np.concatenate([ends[:, :1], decoded, ends[:, 1:]], axis=1).reshape(-1, *pre.shape)
    save_png(out, make_grid(to_unit_range(rows, vr), ncols=steps + 2))
    return len(z1)


def sample_grid(backend, out: str | Path, *, n: int = 64, seed: int = 0, batch_size: int = 64) -> None:
    """Decodings of ``n`` draws z ~ N(0, I) from the prior (paper section 2), as one PNG grid."""
    from alitool.viz import make_grid, save_png

    if n < 1:
        raise UserError(f"--n must be at least 1, not {n}")
    meta = backend.meta
    if not meta.image_size:
        raise UserError(f"model {meta.name!r} generates {meta.channels}-D points, not images")
    z = np.random.default_rng(seed).standard_normal((n, meta.latent_dim)).astype(np.float32)
    images = padded_calls(backend.decode, z, batch_size)
    save_png(out, make_grid(to_unit_range(images, meta.value_range), ncols=max(1, math.ceil(math.sqrt(n)))))


def check_picture_path(out: str | Path, allow_video: bool = False) -> str:
    """'png' or 'video' from ``out``'s extension, or a UserError listing what is possible."""
    suffix = Path(out).suffix.lower()
    if suffix in PICTURE_EXTENSIONS:
        return "png"
    if allow_video and suffix in VIDEO_EXTENSIONS:
        return "video"
    allowed = PICTURE_EXTENSIONS + (VIDEO_EXTENSIONS if allow_video else ())
    raise UserError(f"--out {out}: expected one of {', '.join(allowed)}")
