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
    grid = np.full((nrows * (h + pad) + pad, ncols * (w + pad) + pad, 3), 200, dtype=np.uint8)
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


def reconstruction_picture(originals: np.ndarray, reconstructions: np.ndarray, pairs_per_row: int = 8) -> np.ndarray:
    """Paper figures 2-5: each original ([N, C, H, W] in [0, 1]) with its reconstruction right of it, at most
    ``pairs_per_row`` pairs per row (fewer when there are fewer images), as one RGB uint8 picture."""
    ncols = 2 * max(1, min(pairs_per_row, len(originals)))
    return make_grid(interleave(originals, reconstructions), ncols=ncols)


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
                             pairs_per_row: int = 8) -> None:
    """``reconstruction_picture`` as a PNG, atomically: what training writes every epoch and what
    ``alitool reconstruct`` writes for files or a dataset split."""
    save_png(path, reconstruction_picture(originals, reconstructions, pairs_per_row))


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
