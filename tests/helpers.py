"""Helpers shared by several test modules (conftest.py keeps only fixtures).

Test modules import this as ``from helpers import ...``: pytest's default (prepend) import mode puts tests/ on
sys.path, as it does for conftest.py; a subprocess that needs it inserts tests/ itself (test_checkpoint.py).
Test modules never import from one another: whatever two of them share lives here.
"""

from __future__ import annotations

import csv
import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

if TYPE_CHECKING:
    from alitool.models import ALI

# A digits-shaped model small enough that a training step takes milliseconds.
TINY_DIGITS = [
    "model.latent_dim=4",
    "model.encoder=[[conv,3,1,8,true,0.0,lrelu],[conv,3,1,8,true,0.0,lrelu],[conv,4,1,16,true,0.0,lrelu],"
    "[conv,1,1,8,false,0.0,linear]]",
    "model.decoder=[[deconv,4,1,16,true,0.0,lrelu],[deconv,3,1,8,true,0.0,lrelu],[deconv,3,1,8,true,0.0,lrelu],"
    "[conv,1,1,1,false,0.0,sigmoid]]",
    "model.disc_x=[[conv,3,1,8,false,0.2,lrelu],[conv,3,1,8,true,0.2,lrelu],[conv,4,1,16,true,0.2,lrelu]]",
    "model.disc_z=[[conv,1,1,16,false,0.2,lrelu]]",
    "model.disc_xz=[[conv,1,1,16,false,0.2,lrelu],[conv,1,1,1,false,0.2,linear]]",
    "train.batch_size=32",
    "train.sample_grid=16",
    "train.alice=0",  # the plain ALI game (digits.yaml turns ALICE on); the switch tests turn it on themselves
]


def alitool_subprocess(*args, cwd, timeout: float = 300, **env: str) -> subprocess.CompletedProcess:
    """``python -m alitool.cli ARGS`` as a user runs it, in ``cwd``: one intra-op thread, never the network;
    ``env`` adds or overrides environment variables. Output is captured as text."""
    environ = {**os.environ, "OMP_NUM_THREADS": "1", "ALITOOL_OFFLINE": "1", **env}
    return subprocess.run([sys.executable, "-m", "alitool.cli", *map(str, args)], cwd=cwd, capture_output=True,
                          text=True, env=environ, timeout=timeout)


# The ONNX export tests' tiny conv model: the shared tiny digits-shaped model above.
TINY_CONV = TINY_DIGITS


def trained_like(cfg) -> ALI:
    """A model with non-trivial batch-norm statistics and weights (random init gives near-zero activations)."""
    from alitool.models import ALI, data_shape

    torch.manual_seed(0)
    model = ALI(cfg)
    for p in model.parameters():
        torch.nn.init.normal_(p, 0.0, 0.3)
    model.train()
    with torch.no_grad():  # populate running statistics with a few batches
        for _ in range(3):
            model.encoder(torch.rand(16, *data_shape(cfg)))
            model.decoder(torch.randn(16, cfg.model.latent_dim))
    return model.eval()


def make_run(tmp_path: Path, overrides=TINY_CONV) -> tuple[Path, ALI]:
    """A run folder ``tmp_path/runs/tiny`` with a checkpoint of a ``trained_like`` digits model; returns
    (run folder, model)."""
    from alitool.checkpoint import save_checkpoint
    from alitool.config import load_config

    cfg = load_config("digits", overrides)
    model = trained_like(cfg)
    run = tmp_path / "runs" / "tiny"
    save_checkpoint(run / "checkpoint.pt", cfg=cfg, models={"encoder": model.encoder, "decoder": model.decoder,
                                                             "discriminator": model.discriminator})
    return run, model


# A digits-shaped model (8x8) small enough to load and run in milliseconds; init_std large enough that
# different images get clearly different features (save_tiny_model adds the decoder for its channel count).
TINY_RANDOM_INIT = [
    "model.latent_dim=4",
    "model.init_std=0.2",
    "model.encoder=[[conv,3,1,8,true,0.0,lrelu],[conv,3,1,8,true,0.0,lrelu],[conv,4,1,16,true,0.0,lrelu],"
    "[conv,1,1,8,false,0.0,linear]]",
    "model.disc_x=[[conv,3,1,8,false,0.2,lrelu],[conv,3,1,8,true,0.2,lrelu],[conv,4,1,16,true,0.2,lrelu]]",
    "model.disc_z=[[conv,1,1,16,false,0.2,lrelu]]",
    "model.disc_xz=[[conv,1,1,16,false,0.2,lrelu],[conv,1,1,1,false,0.2,linear]]",
]


def save_tiny_model(path: Path, channels: int = 1, seed: int = 0, overrides: tuple[str, ...] = ()) -> Path:
    """A real checkpoint of a tiny random-init ALI model for ``channels``-channel 8x8 images (``overrides``: more
    config KEY=VALUE strings)."""
    from alitool.checkpoint import save_checkpoint
    from alitool.config import load_config
    from alitool.models import ALI

    decoder = ("model.decoder=[[deconv,4,1,16,true,0.0,lrelu],[deconv,3,1,8,true,0.0,lrelu],"
               f"[deconv,3,1,8,true,0.0,lrelu],[conv,1,1,{channels},false,0.0,sigmoid]]")
    cfg = load_config("digits", [*TINY_RANDOM_INIT, decoder, f"data.channels={channels}", *overrides])
    torch.manual_seed(seed)
    ali = ALI(cfg).eval()
    save_checkpoint(path, cfg=cfg, models={"encoder": ali.encoder, "decoder": ali.decoder})
    return path


def digit_images(n: int) -> np.ndarray:
    """The first ``n`` scikit-learn digits as uint8 8x8 (how alitool's digits dataset scales them)."""
    from sklearn.datasets import load_digits

    return np.round(load_digits().images[:n] * (255.0 / 16.0)).astype(np.uint8)


def write_digit_files(folder: Path, n: int) -> tuple[list[Path], Path]:
    """``n`` digit PNGs and a lossless video of the same digits (FFV1 in AVI) made with OpenCV."""
    import cv2

    folder.mkdir(parents=True, exist_ok=True)
    images = digit_images(n)
    paths = []
    for i, image in enumerate(images):
        paths.append(folder / f"digit_{i:03d}.png")
        assert cv2.imwrite(str(paths[-1]), image)
    video = folder.parent / f"{folder.name}.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"FFV1"), 10, (8, 8))
    assert writer.isOpened()
    for image in images:
        writer.write(cv2.cvtColor(image, cv2.COLOR_GRAY2BGR))
    writer.release()
    return paths, video


def read_index(path: Path) -> list[dict]:
    """The rows of an encode index CSV (``feats.npy``'s companion) as dicts."""
    with open(path, encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f))


def rgb_image(h: int = 40, w: int = 48, seed: int = 0) -> np.ndarray:
    """A smooth RGB picture (JPEG-friendly) as OpenCV BGR uint8."""
    yy, xx = np.mgrid[0:h, 0:w]
    rng = np.random.default_rng(seed)
    chans = [np.sin(xx / (5 + 3 * c) + rng.random() * 6) * np.cos(yy / 7 + c) for c in range(3)]
    return ((np.stack(chans, axis=2) + 1) * 127.5).astype(np.uint8)


def huge_png(path, side: int) -> str:
    """A real, valid 1-bit PNG of side x side pixels: small on disk, side*side*3 bytes once decoded."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    row = b"\x00" + bytes((side + 7) // 8)
    comp = zlib.compressobj(9)
    body = b"".join(comp.compress(row) for _ in range(side)) + comp.flush()
    ihdr = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", body) + chunk(b"IEND", b""))
    return str(path)


# CelebA's 40 attribute names, in list_attr_celeba.txt's order.
ATTRS = ["5_o_Clock_Shadow", "Arched_Eyebrows", "Attractive", "Bags_Under_Eyes", "Bald", "Bangs", "Big_Lips",
         "Big_Nose", "Black_Hair", "Blond_Hair", "Blurry", "Brown_Hair", "Bushy_Eyebrows", "Chubby", "Double_Chin",
         "Eyeglasses", "Goatee", "Gray_Hair", "Heavy_Makeup", "High_Cheekbones", "Male", "Mouth_Slightly_Open",
         "Mustache", "Narrow_Eyes", "No_Beard", "Oval_Face", "Pale_Skin", "Pointy_Nose", "Receding_Hairline",
         "Rosy_Cheeks", "Sideburns", "Smiling", "Straight_Hair", "Wavy_Hair", "Wearing_Earrings", "Wearing_Hat",
         "Wearing_Lipstick", "Wearing_Necklace", "Wearing_Necktie", "Young"]


def write_celeba(root: Path, n: int = 6) -> np.ndarray:
    """Aligned 178x218 JPEGs whose central 178x178 square is one colour and whose top and bottom 20 rows (what
    the centre crop removes) are another; the attribute and partition files in their official layout."""
    import cv2

    (root / "img_align_celeba").mkdir(parents=True)
    rng = np.random.default_rng(0)
    values = rng.choice([-1, 1], size=(n, 40))
    lines = [str(n), " ".join(ATTRS)]
    partition = []
    for i in range(n):
        name = f"{i + 1:06d}.jpg"
        image = np.zeros((218, 178, 3), np.uint8)
        image[:] = (255, 0, 0)  # BGR blue bands
        image[20:198] = (0, 0, 40 * i)  # BGR: red = 40 i in the centre square
        cv2.imwrite(str(root / "img_align_celeba" / name), image, [cv2.IMWRITE_JPEG_QUALITY, 100])
        lines.append(name + " " + " ".join(f"{v:2d}" for v in values[i]))
        partition.append(f"{name} {[0, 0, 0, 1, 2, 2][i]}")
    (root / "list_attr_celeba.txt").write_text("\n".join(lines) + "\n")
    (root / "list_eval_partition.txt").write_text("\n".join(partition) + "\n")
    return values


def invoke_cli(*args):
    """``alitool ARGS`` in this process, through click's test runner (output captured in ``result.output``)."""
    from click.testing import CliRunner

    from alitool.cli import main

    return CliRunner().invoke(main, [str(a) for a in args])


def small_train_set(cfg, n: int):
    """The first ``n`` examples of ``cfg``'s training split (a few steps per epoch)."""
    from alitool.data import load_dataset

    ds = load_dataset(cfg, "train")
    ds.x, ds.y = ds.x[:n], ds.y[:n]
    return ds


def parameters_of(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A copy of ``module``'s parameters, to compare against after an update (``parameters_changed``)."""
    return {name: p.detach().clone() for name, p in module.named_parameters()}


def parameters_changed(before: dict[str, torch.Tensor], module: torch.nn.Module) -> bool:
    return any(not torch.equal(before[name], p) for name, p in module.named_parameters())
