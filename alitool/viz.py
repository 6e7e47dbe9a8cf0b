"""Pictures people would rather look at than read: image grids (the paper's figures 2-6: samples, originals next
to their reconstructions, interpolations; Dumoulin et al. 2017, section 4) and loss curves.

One NumPy implementation for training and the running side alike: images are [N, C, H, W] arrays in [0, 1]
(trainers pass ``tensor.numpy()``; model-range arrays go through ``contract.meta.to_unit_range`` first). No torch
here, and matplotlib only inside the loss plot.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from alitool.atomic import atomic_write_bytes

MIN_CELL = 32  # small images (8x8 digits) are enlarged with nearest-neighbour so a grid is legible
BACKGROUND = 200  # the grey of grid borders and caption strips
CAPTION_HEIGHT = 18  # pixels of the strip that names a reconstruction panel
POSTERIORS = ("mean", "sample")  # which z reconstructs x: mu(x), or a draw z_hat ~ q(z | x)


def to_uint8_hwc(images: np.ndarray) -> np.ndarray:
    """[N, C, H, W] floats in [0, 1] -> [N, H, W, C] uint8 (C = 1 or 3)."""
    arr = np.asarray(images)
    if arr.dtype != np.uint8:
        arr = (np.clip(arr, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    return arr.transpose(0, 2, 3, 1)


def make_grid(images: np.ndarray, ncols: int | None = None, pad: int = 2) -> np.ndarray:
    """Tile [N, C, H, W] images into one RGB uint8 picture, row-major, with a light grey border."""
    tiles = to_uint8_hwc(images)
    n, h, w, c = tiles.shape
    if c == 1:
        tiles = np.repeat(tiles, 3, axis=3)
    scale = max(1, math.ceil(MIN_CELL / max(h, w)))
    if scale > 1:
        tiles = tiles.repeat(scale, axis=1).repeat(scale, axis=2)
        h, w = h * scale, w * scale
    ncols = ncols or max(1, math.ceil(math.sqrt(n)))
    nrows = max(1, math.ceil(n / ncols))
    grid = np.full((nrows * (h + pad) + pad, ncols * (w + pad) + pad, 3), BACKGROUND, dtype=np.uint8)
    for i in range(n):
        r, col = divmod(i, ncols)
        top, left = pad + r * (h + pad), pad + col * (w + pad)
        grid[top : top + h, left : left + w] = tiles[i]
    return grid


def interleave(originals: np.ndarray, reconstructions: np.ndarray) -> np.ndarray:
    """[o1, r1, o2, r2, ...]: in a grid with an even column count, originals sit in odd columns and their
    reconstructions right of them (paper figures 2-5)."""
    originals, reconstructions = np.asarray(originals), np.asarray(reconstructions)
    pairs = np.stack([originals, reconstructions], axis=1)
    return pairs.reshape(-1, *originals.shape[1:])


def reconstruction_picture(originals: np.ndarray, reconstructions: np.ndarray, pairs_per_row: int = 8,
                           caption: str = "") -> np.ndarray:
    """Paper figures 2-5: each original ([N, C, H, W] in [0, 1]) with its reconstruction right of it, at most
    ``pairs_per_row`` pairs per row (fewer when there are fewer images), as one RGB uint8 picture; with a
    ``caption`` strip above it when one is given (``posterior_caption``: which z the reconstructions decode)."""
    ncols = 2 * max(1, min(pairs_per_row, len(originals)))
    picture = make_grid(interleave(originals, reconstructions), ncols=ncols)
    return with_caption(picture, caption) if caption else picture


def posterior_caption(posterior: str, seed: int | None = None, deterministic: bool = False) -> str:
    """What a reconstruction decodes, in words short enough for a narrow grid (plain ASCII: OpenCV's fonts have
    no Greek, and their tilde is hard to tell from a dash): G_x(mu(x)) for the posterior mean, G_x(z) with z drawn
    from q(z|x) for a posterior sample (paper section 3; the paper's figures 2-5 show samples). A deterministic
    encoder (BiGAN's, ``model.encoder_output: deterministic``) has no posterior to sample: its "sample" is mu(x),
    and the caption says so."""
    if posterior == "mean":
        return "posterior mean: G_x(mu(x))"
    if deterministic:
        return "G_x(E(x)): deterministic encoder, nothing to sample"
    return "posterior sample: G_x(z), z drawn from q(z|x)" + (f", seed {seed}" if seed is not None else "")


def with_caption(picture: np.ndarray, caption: str) -> np.ndarray:
    """``picture`` (RGB uint8) below a ``CAPTION_HEIGHT`` strip with ``caption`` in black, widened with border grey
    on the right when the caption is the wider of the two, so that no text is cut."""
    import cv2

    font, scale, thickness, margin = cv2.FONT_HERSHEY_SIMPLEX, 0.4, 1, 4
    (text_w, text_h), _ = cv2.getTextSize(caption, font, scale, thickness)
    width = max(picture.shape[1], text_w + 2 * margin)
    strip = np.full((CAPTION_HEIGHT, width, 3), BACKGROUND, dtype=np.uint8)
    cv2.putText(strip, caption, (margin, (CAPTION_HEIGHT + text_h) // 2), font, scale, (0, 0, 0), thickness,
                cv2.LINE_AA)
    return np.concatenate([strip, _widen(picture, width)], axis=0)


def _widen(picture: np.ndarray, width: int) -> np.ndarray:
    extra = width - picture.shape[1]
    if extra <= 0:
        return picture
    return np.pad(picture, ((0, 0), (0, extra), (0, 0)), constant_values=BACKGROUND)


def save_png(path: str | Path, picture_rgb: np.ndarray) -> None:
    """Write an RGB uint8 array as PNG, atomically."""
    import cv2

    ok, encoded = cv2.imencode(".png", np.ascontiguousarray(picture_rgb[..., ::-1]))
    if not ok:
        raise OSError(f"{path}: PNG encoding failed")
    atomic_write_bytes(Path(path), lambda f: f.write(encoded.tobytes()))


def save_grid(path: str | Path, images: np.ndarray, ncols: int | None = None) -> None:
    save_png(path, make_grid(images, ncols))


def save_reconstruction_grid(path: str | Path, originals: np.ndarray, reconstructions: np.ndarray,
                             pairs_per_row: int = 8, caption: str = "") -> None:
    """``reconstruction_picture`` as a PNG, atomically: what ``alitool reconstruct`` writes for files (with a
    caption naming the posterior) or a dataset split."""
    save_png(path, reconstruction_picture(originals, reconstructions, pairs_per_row, caption))


def save_reconstruction_panels(path: str | Path, originals: np.ndarray, panels: list[tuple[str, np.ndarray]],
                               pairs_per_row: int = 8) -> None:
    """One PNG of captioned ``reconstruction_picture`` panels, one above the other, each pairing the same
    ``originals`` with its own reconstructions: training's figure of the posterior mean and a posterior sample."""
    pictures = [reconstruction_picture(originals, recons, pairs_per_row, caption) for caption, recons in panels]
    width = max(p.shape[1] for p in pictures)
    save_png(path, np.concatenate([_widen(p, width) for p in pictures], axis=0))


def save_loss_plot(path: str | Path, rows: list[dict[str, float]],
                   keys: tuple[str, ...] = ("loss_d", "loss_g")) -> None:
    """Loss curves per epoch from metrics.csv rows, written atomically."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    epochs = [r["epoch"] for r in rows]
    for key in keys:
        ax.plot(epochs, [r[key] for r in rows], label=key, marker="o" if len(rows) < 30 else None)
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss (mean over epoch)")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    atomic_write_bytes(Path(path), lambda f: f.write(buf.getvalue()))
