"""Bad inputs for the hostile-input tests and the reliability corpus, made here from their formats' specifications:
a Radiance HDR named .png whose header says 12000x12000 (its uniform scanlines are run-length coded, so it is
about 9 MB on disk and 1.7 GB once decoded), a JPEG with one stray byte after APP0 (which libjpeg skips), random
bytes named .jpg, a float TIFF holding NaN, a zip archive whose member inflates 1000 times, a checkpoint carrying
a pickled object. Not a test module: test modules import it as they import ``helpers``."""

from __future__ import annotations

import zipfile
from pathlib import Path

import cv2
import numpy as np


def radiance_hdr(path: Path, width: int, height: int) -> Path:
    """A valid Radiance HDR of one colour: each scanline is new-style RLE (runs of 127 per component)."""
    runs = b""
    for value in (128, 64, 32, 129):  # R, G, B, exponent
        left = width
        while left:
            n = min(127, left)
            runs += bytes((128 + n, value))
            left -= n
    line = bytes((2, 2, width >> 8, width & 0xFF)) + runs
    with open(path, "wb") as f:
        f.write(b"#?RADIANCE\nFORMAT=32-bit_rle_rgbe\n\n" + f"-Y {height} +X {width}\n".encode())
        for _ in range(height):
            f.write(line)
    return path


def jpeg_with_stray_byte(path: Path, h: int = 40, w: int = 48) -> Path:
    """A valid JPEG with one extra byte between APP0 and the next marker (libjpeg skips it with a warning)."""
    ok, data = cv2.imencode(".jpg", np.full((h, w), 120, np.uint8))
    data = data.tobytes()
    assert data[2:4] == b"\xff\xe0"  # APP0 (JFIF)
    end = 4 + int.from_bytes(data[4:6], "big")
    path.write_bytes(data[:end] + b"\x00" + data[end:])
    return path


def random_jpeg(path: Path) -> Path:
    """A JPEG signature, then random bytes: under the old header parser this was a 63810x18435 image."""
    path.write_bytes(b"\xff\xd8\xff" + np.random.default_rng(2).bytes(4000))
    return path


def nan_tiff(path: Path) -> Path:
    image = np.full((16, 16), 0.5, np.float32)
    image[3, 4] = np.nan
    assert cv2.imwrite(str(path), image)
    return path


def zip_bomb(path: Path, member_bytes: int, name: str = "bomb.png") -> Path:
    """A zip archive with one member of ``member_bytes`` zeros (about 1000:1 compressed), streamed to disk."""
    block = bytes(1 << 20)
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
        with zf.open(name, "w", force_zip64=True) as member:
            for _ in range(member_bytes >> 20):
                member.write(block)
        good = cv2.imencode(".png", np.full((8, 8), 7, np.uint8))[1].tobytes()
        zf.writestr("good.png", good)
    return path


class Gift:
    """Stands for arbitrary code a malicious checkpoint could carry: unpickling it would import and build it."""


def pickled_checkpoint(good: Path, path: Path) -> Path:
    """``good``'s checkpoint with an extra entry holding an arbitrary Python object (a pickle payload)."""
    import torch

    payload = torch.load(good, weights_only=True)
    payload["extra"] = {"gift": Gift()}
    torch.save(payload, path)
    return path
