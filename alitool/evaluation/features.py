"""Feature vectors for the L2-SVM protocol (paper section 4.3): a model's, and the two baselines'.

- Model features go through the backend interface (``alitool.backends.load_backend``), so a checkpoint, an
  exported ONNX model or an INT8 ONNX model is evaluated the same way. ``paper``: ``Encoder.features``, the
  encoder output (mu and log_sigma) concatenated with its last three hidden layers, flattened; ``mean``: the
  posterior mean mu(x) (latent_dim wide). docs/evaluation.md lists the width per config.
- ``official_model_features``: the authors' SVM script's vector (``Encoder.official_features``: mu and the last
  three hidden layers before their activation), for ``--protocol official``. PyTorch checkpoints only: exported
  encoders output the after-activation layers alone.
- Raw pixels: the image in [0, 1], flattened (C*H*W wide).
- PCA: the top ``n`` principal components of the training images (unlabelled, like ALI's own training data),
  with ``n`` = latent_dim by default, fitted on at most 20,000 pool images.
"""

from __future__ import annotations

import numpy as np

from alitool.config import Config, from_dict, load_config
from alitool.contract.meta import to_model_range
from alitool.data import ArrayDataset, load_dataset
from alitool.errors import UserError

# The split whose labels the protocol may use. SVHN trains on extra_32x32.mat and keeps train_32x32.mat as its
# "val" split (alitool/data/svhn.py), which is the labelled pool of the paper's SVHN experiments.
POOL_SPLIT = {"svhn": "val"}
PCA_FIT_LIMIT = 20000


def dataset_config(dataset: str | None, model_config: dict) -> Config:
    """The config whose data section names the dataset to evaluate on: ``dataset`` (a config name or YAML path),
    else the model's own training config."""
    if dataset:
        return load_config(dataset)
    if not model_config:
        raise UserError("the model carries no training config; name the dataset with --dataset")
    return from_dict(model_config)


def load_pool_and_test(cfg: Config, data_dir: str = "") -> tuple[ArrayDataset, ArrayDataset]:
    """(labelled pool, test split) of ``cfg.data.name``; both must carry labels."""
    pool = load_dataset(cfg, POOL_SPLIT.get(cfg.data.name, "train"), data_dir)
    test = load_dataset(cfg, "test", data_dir)
    for ds in (pool, test):
        if ds.y is None:
            raise UserError(f"the {ds.name} {ds.split} split has no labels; the SVM protocol needs a labelled dataset")
    return pool, test


def check_shapes(images: np.ndarray, input_shape: tuple[int, ...], model: str, dataset: str) -> None:
    if tuple(images.shape[1:]) != tuple(input_shape):
        raise UserError(f"{model}: the model takes inputs of shape {tuple(input_shape)} but {dataset} images are "
                        f"{tuple(images.shape[1:])}; evaluate on the dataset it was trained for")


def to_float(images: np.ndarray) -> np.ndarray:
    """uint8 images -> float32 in [0, 1]; float data passes through."""
    if images.dtype == np.uint8:
        return images.astype(np.float32) / 255.0
    return images.astype(np.float32)


def model_features(backend, images: np.ndarray, kind: str, batch_size: int = 500) -> np.ndarray:
    """``backend.encode`` over ``images`` (uint8 or [0, 1] floats) in batches, scaled to the model's value range."""
    out = []
    for start in range(0, len(images), batch_size):
        x = to_model_range(to_float(images[start : start + batch_size]), backend.meta.value_range)
        out.append(np.asarray(backend.encode(x, kind=kind), dtype=np.float32))
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


def official_model_features(backend, images: np.ndarray, batch_size: int = 500) -> np.ndarray:
    """``Encoder.official_features`` over ``images`` in batches, through a PyTorch backend's encoder (eval mode:
    batch norm uses its running statistics, as the official script's inference graph did)."""
    import torch

    from alitool.models import Encoder

    encoder = getattr(backend, "encoder", None)
    if not isinstance(encoder, Encoder):
        raise UserError("--protocol official needs a PyTorch checkpoint (a run folder or checkpoint.pt): its features "
                        "take hidden layers before their activation, which exported encoders do not output")
    device = next(encoder.parameters()).device
    out = []
    with torch.inference_mode():
        for start in range(0, len(images), batch_size):
            x = to_model_range(to_float(images[start : start + batch_size]), backend.meta.value_range)
            out.append(encoder.official_features(torch.from_numpy(np.ascontiguousarray(x)).to(device))
                       .float().cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


def raw_pixel_features(images: np.ndarray) -> np.ndarray:
    return to_float(images).reshape(len(images), -1)


class PcaFeatures:
    """Projection on the top ``n`` principal components of (up to PCA_FIT_LIMIT) unlabelled pool images."""

    def __init__(self, n: int, pool_images: np.ndarray, seed: int = 0):
        from sklearn.decomposition import PCA

        pixels = int(np.prod(pool_images.shape[1:]))
        if not 1 <= n <= min(pixels, len(pool_images)):
            raise UserError(f"PCA with {n} components on {len(pool_images)} images of {pixels} pixels is not possible")
        rng = np.random.default_rng([seed, 3])
        fit_rows = np.sort(rng.choice(len(pool_images), min(PCA_FIT_LIMIT, len(pool_images)), replace=False))
        self.pca = PCA(n_components=n, svd_solver="randomized", random_state=seed)
        self.pca.fit(raw_pixel_features(pool_images[fit_rows]))
        self.n = n

    def __call__(self, images: np.ndarray) -> np.ndarray:
        return self.pca.transform(raw_pixel_features(images)).astype(np.float32)
