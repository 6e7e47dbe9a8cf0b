"""Is loading ever the training bottleneck? Images/s the loader delivers as float training batches
(``iterate_batches`` + ``ArrayDataset.float_batch``, exactly what the training loop does) next to the images/s
of the ALI training step on the same shapes, plus the one-off costs: parsing the official files and decoding
JPEG folders (CelebA / Tiny ImageNet / any folder).

    python benchmarks/data_loader.py            # about two minutes on 2 CPU cores

Fashion-MNIST is the real data from the Debian package when installed; the other rows use arrays of the
official shapes (the loader's per-batch path is the same whatever the pixel values).
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from alitool.config import load_config
from alitool.data import ArrayDataset, iterate_batches, load_dataset
from alitool.data.imagefiles import ImageSource, decode_all
from alitool.data.svhn import read_svhn_mat


def loader_rate(ds: ArrayDataset, batch_size: int, seconds: float = 3.0) -> float:
    """Images/s of float batches, shuffled as in training, for about ``seconds``."""
    images, start, epoch = 0, time.perf_counter(), 0
    while time.perf_counter() - start < seconds:
        for index in iterate_batches(len(ds), batch_size, seed=0, epoch=epoch):
            batch = ds.float_batch(index)
            images += len(batch)
            if time.perf_counter() - start >= seconds:
                break
        epoch += 1
    return images / (time.perf_counter() - start)


def train_rate(config: str, steps: int) -> float:
    """Images/s of the ALI training step (forward + both backward passes + both Adam steps) on CPU."""
    from alitool.trainers.ali import ALIGame

    cfg = load_config(config)
    game = ALIGame(cfg, torch.device("cpu"))
    size, ch, bs = cfg.data.image_size, cfg.data.channels, cfg.train.batch_size
    x = torch.rand(bs, ch, size, size)
    game.init_from_data(x.mean(0))
    game.train(True)
    game.step(x)  # warm-up
    start = time.perf_counter()
    for _ in range(steps):
        game.step(x)
    return steps * bs / (time.perf_counter() - start)


def synthetic(name: str, n: int, ch: int, size: int) -> ArrayDataset:
    return ArrayDataset(name, "train", np.random.default_rng(0).integers(0, 256, (n, ch, size, size), np.uint8))


def main() -> None:
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; load {os.getloadavg()[0]:.1f}",
          file=sys.stderr)
    rows = []
    try:
        fashion = load_dataset(load_config("fashion-mnist"), "train")
        fashion_label = "fashion-mnist (real, Debian)"
    except Exception as err:  # noqa: BLE001 - the benchmark still runs without the package
        print(f"fashion-mnist: {err}; using random arrays", file=sys.stderr)
        fashion, fashion_label = synthetic("fashion-mnist", 60000, 1, 28), "fashion-mnist (random)"
    cases = [
        (fashion_label, fashion, "fashion-mnist", 20),
        ("svhn shape (73,257 x 3x32x32)", synthetic("svhn", 73257, 3, 32), "svhn", 3),
        ("celeba shape (20,000 x 3x64x64)", synthetic("celeba", 20000, 3, 64), "celeba", 1),
    ]
    for label, ds, config, steps in cases:
        bs = load_config(config).train.batch_size
        load = loader_rate(ds, bs)
        train = train_rate(config, steps)
        rows.append((label, bs, load, train, load / train))
    print("\n| data | batch | loader img/s (float batches) | ALI train step img/s (CPU) | loader / train |")
    print("|---|---:|---:|---:|---:|")
    for label, bs, load, train, ratio in rows:
        print(f"| {label} | {bs} | {load:,.0f} | {train:,.1f} | {ratio:,.0f}x |")

    # one-off costs: parsing an official SVHN .mat of the official train size; decoding a folder of JPEGs
    with tempfile.TemporaryDirectory() as tmp:
        import cv2
        import scipy.io

        n = 73257
        x = np.random.default_rng(0).integers(0, 256, (32, 32, 3, n), np.uint8)
        scipy.io.savemat(f"{tmp}/train_32x32.mat", {"X": x, "y": (np.arange(n) % 10 + 1)[:, None].astype(np.uint8)})
        del x
        start = time.perf_counter()
        images, _ = read_svhn_mat(Path(f"{tmp}/train_32x32.mat"))
        mat_s = time.perf_counter() - start
        folder = Path(tmp) / "jpegs"
        folder.mkdir()
        rng = np.random.default_rng(0)
        for i in range(400):  # CelebA-sized aligned faces: 178x218 JPEGs
            img = cv2.GaussianBlur(rng.integers(0, 256, (218, 178, 3), np.uint8), (9, 9), 3)
            cv2.imwrite(str(folder / f"{i:06d}.jpg"), img, [cv2.IMWRITE_JPEG_QUALITY, 95])
        source = ImageSource(folder)
        names = source.list_images()
        start = time.perf_counter()
        decode_all(source, names, 64, 3)
        decode_rate = len(names) / (time.perf_counter() - start)
    print("\n| one-off cost | measured |")
    print("|---|---:|")
    print(f"| parse + convert SVHN .mat, 73,257 images (HWCN -> NCHW uint8) | {mat_s:.2f} s "
          f"({len(images) / mat_s:,.0f} img/s) |")
    print(f"| decode 178x218 JPEG -> centre crop -> 64x64 RGB, thread pool | {decode_rate:,.0f} img/s "
          f"(CelebA's 202,599: {202599 / decode_rate / 60:.1f} min, once; then the .npy cache) |")


if __name__ == "__main__":
    main()
