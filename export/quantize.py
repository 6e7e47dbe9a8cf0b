"""Static INT8 quantisation of the exported encoder G_z(x) (paper section 2) for fast CPU encoding.

ONNX Runtime's ``quant_pre_process`` (shape inference, Conv+BatchNorm folding) then ``quantize_static`` in QDQ
format with per-channel weight scales, calibrated on real images: the training split of the run's own dataset,
or a folder / .npy file given with ``--calib``. QDQ is also TensorRT 11's INT8 input format, so the one file
serves ONNX Runtime on CPU and TensorRT on GPU. Fidelity is measured against the fp32 file on held-out images
(the test split where the dataset has one): cosine similarity of z_mean and relative error.

A conditional encoder (paper section 4.4) is calibrated and measured on dataset images with their own y; y itself
stays float (the nodes that read it are left out of quantisation: an embedding of 0/1 values needs no int8).
Calibration images from a folder or .npy carry no y, so a conditional model refuses them with one line.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from alitool.config import Config
from alitool.errors import UserError
from alitool.export.onnx import (
    CONDITION_INPUT,
    ENCODER_INPUT,
    cpu_session,
    import_onnxruntime,
    read_meta,
    save_model,
    set_metadata,
)

DEFAULT_CALIBRATION_IMAGES = 512
HELDOUT_IMAGES = 512
CALIBRATION_BATCH = 32
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


@dataclass
class ImageSet:
    images: np.ndarray  # float32 [N, *input_shape] in the model's value range
    source: str  # where they came from, in words (kept in the INT8 file's metadata)
    y: np.ndarray | None = None  # a conditional model's y of each image, float32 [N, y_dim]

    def feed(self, start: int, stop: int) -> dict[str, np.ndarray]:
        """The encoder's inputs for images start..stop (and their y)."""
        feed = {ENCODER_INPUT: self.images[start:stop]}
        if self.y is not None:
            feed[CONDITION_INPUT] = self.y[start:stop]
        return feed


# ---------------------------------------------------------------------------------------------------------
# Calibration and held-out images.


def calibration_set(cfg: Config, calib: str = "", data_dir: str = "", seed: int = 0) -> tuple[ImageSet, ImageSet]:
    """(calibration images, held-out images) for ``--calib`` given as "", a count, a folder or a .npy file."""
    from alitool.conditional import condition_of

    condition = condition_of(cfg.model)
    spec = str(calib).strip()
    if spec == "" or spec.isdigit():
        count = int(spec) if spec else DEFAULT_CALIBRATION_IMAGES
        if count < 1:
            raise UserError("--calib: give at least 1 calibration image")
        pool = _dataset_split(cfg, "train", data_dir, calib_hint=True)
        order = np.random.default_rng(seed).permutation(len(pool))
        chosen = order[:count]
        calib_set = ImageSet(_as_float(pool.x[chosen]), f"{cfg.data.name} train split, {min(count, len(pool))} "
                                                         f"random images (seed {seed})",
                             None if condition is None else condition.rows(pool, chosen))
        leftover = (pool, order[count:])
    else:
        if condition is not None:
            raise UserError(f"--calib {spec}: this conditional model needs each calibration image's y, which a "
                            f"folder or .npy does not give; calibrate on its dataset instead (--calib N)")
        path = Path(spec)
        if not path.exists():
            raise UserError(f"--calib {spec}: no such folder or .npy file (or give a number of training images)")
        calib_set = read_images(path, cfg)
        leftover = None
    return calib_set, heldout_set(cfg, data_dir, leftover)


def heldout_set(cfg: Config, data_dir: str, leftover: tuple | None) -> ImageSet:
    """The dataset's test split where it has one; else the training images the calibration did not use
    (``leftover``: (dataset, row indices))."""
    from alitool.conditional import condition_of

    condition = condition_of(cfg.model)
    try:
        test = _dataset_split(cfg, "test", data_dir)
        count = min(len(test), HELDOUT_IMAGES)
        y = None if condition is None else condition.rows(test, slice(0, count))
        return ImageSet(_as_float(test.x[:count]), f"{cfg.data.name} test split, {count} images", y)
    except UserError:
        pass
    if leftover is not None and len(leftover[1]):
        pool, rows = leftover[0], leftover[1][:HELDOUT_IMAGES]
        return ImageSet(_as_float(pool.x[rows]), f"{cfg.data.name} train images not used for calibration, {len(rows)}",
                        None if condition is None else condition.rows(pool, rows))
    return ImageSet(np.zeros((0,), np.float32), "none available")


def _dataset_split(cfg: Config, split: str, data_dir: str, calib_hint: bool = False):
    """The ArrayDataset of ``split``; a missing training split says how to calibrate without it."""
    from alitool.data import load_dataset

    try:
        return load_dataset(cfg, split, data_dir)
    except UserError as err:
        if not calib_hint:
            raise
        raise UserError(f"no {cfg.data.name} training images for INT8 calibration ({err}); pass "
                        f"--calib FOLDER (images like those the model will encode) or --data-dir") from None


def _as_float(x: np.ndarray) -> np.ndarray:
    if x.dtype == np.uint8:
        return x.astype(np.float32) / 255.0
    return np.ascontiguousarray(x, dtype=np.float32)


def read_images(path: Path, cfg: Config) -> ImageSet:
    """Images from a folder (any size: centre-cropped to a square, resized) or a .npy array [N, *input shape]."""
    from alitool.models import data_shape

    shape = data_shape(cfg)
    if path.is_file():
        if path.suffix.lower() != ".npy":
            raise UserError(f"--calib {path}: expected a folder of images or a .npy array")
        try:
            array = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as err:
            raise UserError(f"--calib {path}: not a readable .npy array ({err})") from None
        if tuple(array.shape[1:]) != shape or len(array) == 0:
            wanted = ", ".join(map(str, shape))
            raise UserError(f"--calib {path}: array of shape {array.shape}; the model takes [N, {wanted}]")
        return ImageSet(_as_float(array), f"{path.name}, {len(array)} rows")
    if cfg.data.image_size == 0:
        raise UserError(f"--calib {path}: this model takes {shape[0]}-d vectors, not images; give a .npy array")
    import cv2

    files = sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise UserError(f"--calib {path}: no images ({', '.join(IMAGE_SUFFIXES)}) in that folder")
    images, skipped = [], []
    for file in files:
        flag = cv2.IMREAD_GRAYSCALE if cfg.data.channels == 1 else cv2.IMREAD_COLOR
        img = cv2.imread(str(file), flag)
        if img is None:
            skipped.append(file.name)
            continue
        images.append(_square_resize(img, cfg.data.image_size, cfg.data.channels))
    if not images:
        raise UserError(f"--calib {path}: none of the {len(files)} files could be decoded as images")
    note = f", {len(skipped)} unreadable skipped" if skipped else ""
    return ImageSet(_as_float(np.stack(images)), f"folder {path}, {len(images)} images{note}")


def _square_resize(img: np.ndarray, size: int, channels: int) -> np.ndarray:
    import cv2

    h, w = img.shape[:2]
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    img = cv2.resize(img[top : top + side, left : left + side], (size, size), interpolation=cv2.INTER_AREA)
    if channels == 1:
        return img[None]
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB).transpose(2, 0, 1)


# ---------------------------------------------------------------------------------------------------------
# Quantisation.


def _reader(images: ImageSet):
    from onnxruntime.quantization import CalibrationDataReader

    class ArrayReader(CalibrationDataReader):
        """Feeds the calibration images (and their y) to ONNX Runtime's calibrator in batches."""

        def __init__(self):
            self.batches = iter(range(0, len(images.images), CALIBRATION_BATCH))

        def get_next(self):
            start = next(self.batches, None)
            return None if start is None else images.feed(start, start + CALIBRATION_BATCH)

    return ArrayReader()


def quantize_encoder(fp32_path: Path, int8_path: Path, calibration: ImageSet) -> None:
    """Write a static INT8 (QDQ, symmetric signed 8-bit, per-channel weights) copy of ``fp32_path``.

    The copy has the latent outputs only (z_mean, z_log_sigma), not the section 4.3 ``features``: tapping the
    hidden layers for them kept ONNX Runtime from fusing the last layers into int8 kernels (SVHN architecture,
    one thread: 1,070 images per CPU-second with ``features``, 2,570 without). The fp32 file keeps them.
    """
    import_onnxruntime()
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quant_pre_process, quantize_static

    meta, values = read_meta(fp32_path)
    if values.get("alitool.graph") != "encoder":
        raise UserError(f"{fp32_path}: INT8 quantisation applies to the encoder file (encoder.onnx)")
    if len(calibration.images) == 0:
        raise UserError("no calibration images")
    int8_path = Path(int8_path)
    int8_path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=int8_path.parent, prefix=".quantize.") as tmp:
        latent_only, prepared, quantized = (Path(tmp) / n for n in ("latent.onnx", "prepared.onnx", "int8.onnx"))
        onnx.save(without_outputs(onnx.load(str(fp32_path)), {"features"}), str(latent_only))
        quant_pre_process(str(latent_only), str(prepared), skip_symbolic_shape=False)
        quantize_static(
            str(prepared), str(quantized), _reader(calibration),
            quant_format=QuantFormat.QDQ, per_channel=True,
            activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax,
            nodes_to_exclude=float_output_nodes(prepared) + condition_nodes(prepared),
            # What TensorRT's explicit quantisation accepts, so one file serves both runtimes: zero points of 0
            # (symmetric; z_mean cosine 0.9990 vs 0.9994 asymmetric on trained digits) and float biases (TensorRT
            # refuses an int32 DequantizeLinear; ONNX Runtime's CPU speed measured the same either way).
            extra_options={"ActivationSymmetric": True, "WeightSymmetric": True, "QuantizeBias": False},
        )
        model = onnx.load(str(quantized))
    set_metadata(model, meta, "encoder", precision="int8", extra={
        "alitool.calibration": calibration.source,
        "alitool.quantization": "static QDQ, symmetric int8, per-channel weights, MinMax calibration, float outputs",
    })
    save_model(model, int8_path)


def without_outputs(model: onnx.ModelProto, names: set[str]) -> onnx.ModelProto:
    """``model`` less the graph outputs ``names`` and the nodes that only they needed."""
    kept = [o for o in model.graph.output if o.name not in names]
    del model.graph.output[:]
    model.graph.output.extend(kept)
    needed = {o.name for o in kept}
    live = []
    for node in reversed(list(model.graph.node)):  # nodes are topologically sorted
        if any(out in needed for out in node.output):
            live.append(node)
            needed.update(node.input)
    del model.graph.node[:]
    model.graph.node.extend(reversed(live))
    used = [i for i in model.graph.initializer if i.name in needed]
    del model.graph.initializer[:]
    model.graph.initializer.extend(used)
    return model


def condition_nodes(model_path: Path) -> list[str]:
    """The nodes that read a conditional model's input ``y`` (its embedding): left in float, so y is never
    quantised (its 0/1 values and their embedding gain nothing from int8)."""
    model = onnx.load(str(model_path), load_external_data=False)
    return [node.name for node in model.graph.node if CONDITION_INPUT in node.input]


PLUMBING_OPS = {"Reshape", "Flatten", "Concat", "Split", "Slice", "Shape", "Gather", "Squeeze", "Unsqueeze",
                "Identity", "Transpose", "Add", "Sub", "Mul", "Div", "Cast", "Constant"}
WEIGHTED_OPS = {"Conv", "ConvTranspose", "Gemm", "MatMul"}


def float_output_nodes(model_path: Path) -> list[str]:
    """Nodes left in float so that the outputs are not rounded to 256 levels.

    z_mean's dimensions differ in scale by 100x or more (a trained encoder puts little variance on some), so one
    output scale would round the small ones to 0. Walking back from each output through reshapes, splits and
    the features concat, this collects those nodes and the last weighted layer that writes (mu, log_sigma); the
    activations feeding them stay quantised, so the convolutions themselves all still run in INT8.
    """
    model = onnx.load(str(model_path), load_external_data=False)
    producers = {out: node for node in model.graph.node for out in node.output}
    keep: dict[str, None] = {}
    frontier = [o.name for o in model.graph.output]
    while frontier:
        node = producers.get(frontier.pop())
        if node is None or node.name in keep:
            continue
        if node.op_type in WEIGHTED_OPS:
            keep[node.name] = None  # the output layer itself; its input stays quantised
        elif node.op_type in PLUMBING_OPS:
            keep[node.name] = None
            frontier.extend(node.input)
    return list(keep)


# ---------------------------------------------------------------------------------------------------------
# Fidelity.


@dataclass
class Fidelity:
    images: int
    cosine_mean: float  # mean over images of cos(z_mean_int8, z_mean_fp32)
    cosine_min: float
    relative_error: float  # ||z_int8 - z_fp32|| / ||z_fp32|| over the whole held-out set
    source: str

    def line(self) -> str:
        if not self.images:
            return "INT8 fidelity: no held-out images available to measure it"
        return (f"INT8 fidelity vs fp32 on {self.source}: z_mean cosine similarity mean {self.cosine_mean:.4f} "
                f"(min {self.cosine_min:.4f}), relative error {100 * self.relative_error:.2f}%")


def z_mean_fidelity(reference: np.ndarray, candidate: np.ndarray, source: str = "") -> Fidelity:
    if len(reference) == 0:
        return Fidelity(0, float("nan"), float("nan"), float("nan"), source)
    dot = np.sum(reference * candidate, axis=1)
    norms = np.linalg.norm(reference, axis=1) * np.linalg.norm(candidate, axis=1)
    cosine = dot / np.maximum(norms, 1e-12)
    rel = np.linalg.norm(candidate - reference) / max(float(np.linalg.norm(reference)), 1e-12)
    return Fidelity(len(reference), float(cosine.mean()), float(cosine.min()), float(rel), source)


def measure_fidelity(fp32_path: Path, int8_path: Path, heldout: ImageSet, threads: int = 0) -> Fidelity:
    if len(heldout.images) == 0:
        return z_mean_fidelity(heldout.images, heldout.images, heldout.source)
    outputs = []
    for path in (fp32_path, int8_path):
        session = cpu_session(Path(path), threads)
        outputs.append(np.concatenate([
            session.run(["z_mean"], heldout.feed(i, i + 256))[0] for i in range(0, len(heldout.images), 256)
        ]))
    return z_mean_fidelity(outputs[0], outputs[1], heldout.source)
