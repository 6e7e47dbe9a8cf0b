"""Static INT8 quantisation of the exported encoder G_z(x) (paper section 2) for fast CPU encoding.

ONNX Runtime's ``quant_pre_process`` (shape inference, Conv+BatchNorm folding) then ``quantize_static`` in QDQ
format with per-channel weight scales, calibrated on real images: the training split of the run's own dataset,
or a folder / .npy file given with ``--calib`` (a folder's images go through the one preprocessing of
``alitool.contract.preprocess``, as in training and inference). QDQ is also TensorRT 11's INT8 input format, so
the one file serves ONNX Runtime on CPU and TensorRT on GPU. Fidelity is measured against the fp32 file on
held-out images (the test split where the dataset has one): cosine similarity of z_mean and relative error.

A conditional encoder (paper section 4.4) is calibrated and measured on dataset images with their own y; y itself
stays float (the nodes that read it are left out of quantisation: an embedding of 0/1 values needs no int8).
Calibration images from a folder or .npy carry no y, so a conditional model refuses them with one line.

The number formats are a few named schemes (``SCHEMES``), because the same file runs on CPUs whose int8 kernels
differ: on x86 without VNNI/AMX, ONNX Runtime multiplies u8 x s8 with ``vpmaddubsw``, whose 16-bit sums saturate
with full-range 8-bit weights (alitool/cpu_features.py). The default, ``portable``, quantises weights to 7 bits
(``reduce_range``), which cannot saturate, and keeps TensorRT's format (int8, zero points of 0, float biases).
The scheme's name is written into the file (``alitool.int8_scheme``), so the running side can warn where a file is
known to return wrong features.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from alitool.config import Config
from alitool.contract.names import (
    ENCODER_ONNX,
    FEATURES,
    GRAPH_KEY,
    IMAGES,
    INT8_SCHEME_KEY,
    QUANTIZATION_KEY,
    Z_MEAN,
    Y,
)
from alitool.contract.preprocess import IMAGE_EXTENSIONS, BadInput, Preprocess, load_pixels, to_unit_float
from alitool.cpu_features import FULL_RANGE_INT8_SCHEMES, describe_int8_support, has_int8_dot_product
from alitool.errors import UserError
from alitool.export.onnx import cpu_session, import_onnxruntime, read_meta, save_model, set_metadata

DEFAULT_CALIBRATION_IMAGES = 512
HELDOUT_IMAGES = 512
CALIBRATION_BATCH = 32
FIDELITY_FLOOR = 0.99  # z_mean cosine mean below which the export warns
# MinMax calibration: beyond this many images the ranges barely move, so more cannot help.
USEFUL_CALIBRATION_IMAGES = 2000


# ---------------------------------------------------------------------------------------------------------
# Schemes: which 8-bit formats, for which CPUs and runtimes.


@dataclass(frozen=True)
class Int8Scheme:
    name: str
    activations: str  # "int8" | "uint8"
    weights: str  # "int8" | "uint8"
    symmetric: bool  # zero points of 0 (activations and weights): what TensorRT's explicit quantisation needs
    reduce_range: bool  # 7-bit weights: two products of them cannot overflow vpmaddubsw's 16-bit sums
    int32_bias: bool  # biases as int32 DequantizeLinear (TensorRT refuses those; it needs float biases)
    safe_on: str  # where its features are faithful, in words

    @property
    def tensorrt(self) -> bool:
        return (self.activations, self.weights) == ("int8", "int8") and self.symmetric and not self.int32_bias

    @property
    def full_range_int8_weights(self) -> bool:
        """Saturates ONNX Runtime's u8 x s8 kernels on x86 without VNNI/AMX (alitool/cpu_features.py)."""
        return self.weights == "int8" and not self.reduce_range

    def describe(self) -> str:
        """The readable ``alitool.quantization`` text of a file of this scheme."""
        width = "7-bit" if self.reduce_range else "8-bit"
        symmetry = "symmetric" if self.symmetric else "asymmetric"
        bias = "int32 biases" if self.int32_bias else "float biases"
        return (f"static QDQ, scheme {self.name}: {self.activations} activations, {width} {self.weights} weights "
                f"per channel, {symmetry}, {bias}, MinMax calibration, float outputs")


# Measured on trained digits (z_mean of INT8 vs fp32 on 359 held-out images, cosine mean / min / relative error),
# native on a Xeon with AVX-512 VNNI + AMX, emulated as AVX2-only x86 and as ARM64 (docs/export.md has the table):
#   s8/s8 symmetric, 8-bit weights: 0.9998 / 0.9987 / 2.2 % with VNNI and on ARM64, 0.92 / 0.68 / 43 % on AVX2 x86;
#   the same with 7-bit weights: 0.9998 / 0.9991 / 2.1 % on all three; u8/u8: 0.9998 / 0.9994 / 2.0 % on all three.
SCHEMES: dict[str, Int8Scheme] = {s.name: s for s in (
    Int8Scheme("portable", "int8", "int8", symmetric=True, reduce_range=True, int32_bias=False,
               safe_on="every CPU (x86 with or without VNNI/AMX, ARM64) and TensorRT"),
    Int8Scheme("vnni", "int8", "int8", symmetric=True, reduce_range=False, int32_bias=False,
               safe_on="x86 with AVX-512 VNNI, AVX-VNNI or AMX, ARM64 and TensorRT; wrong features on x86 without "
                       "VNNI (AVX2-only, AVX-512 without VNNI)"),
    Int8Scheme("u8u8", "uint8", "uint8", symmetric=False, reduce_range=False, int32_bias=False,
               safe_on="every CPU, ONNX Runtime only (TensorRT refuses non-zero zero points)"),
    # ONNX Runtime rewrites each float bias of a QDQ Conv/Gemm into an int32 DequantizeLinear when it loads the
    # file (its WeightBiasQuantization optimiser); saving "Runtime" style ORT-format models then fails on the nodes
    # it made (onnxruntime 1.32: "The sum of input arg count is not equal to size of input defs in node
    # (node_linear_bias_dq)"). Biases already int32 in the file leave that optimiser nothing to do.
    Int8Scheme("mobile", "int8", "int8", symmetric=True, reduce_range=True, int32_bias=True,
               safe_on="every CPU, ONNX Runtime only, including ORT Mobile's Runtime optimisation style (TensorRT "
                       "refuses int32 biases)"),
)}
DEFAULT_SCHEME = "portable"


def int8_scheme(name: str | Int8Scheme) -> Int8Scheme:
    if isinstance(name, Int8Scheme):
        return name
    try:
        return SCHEMES[name]
    except KeyError:
        raise UserError(f"--int8-scheme {name}: expected one of {', '.join(SCHEMES)}") from None


def _check_scheme_table() -> None:
    """The running side (alitool/cpu_features.py) knows the full-range schemes by name, without this module."""
    full_range = {s.name for s in SCHEMES.values() if s.full_range_int8_weights}
    assert full_range == FULL_RANGE_INT8_SCHEMES, (full_range, FULL_RANGE_INT8_SCHEMES)


_check_scheme_table()


@dataclass
class ImageSet:
    images: np.ndarray  # float32 [N, *input_shape] in [0, 1]: the value range of every model alitool trains
    source: str  # where they came from, in words (kept in the INT8 file's metadata)
    y: np.ndarray | None = None  # a conditional model's y of each image, float32 [N, y_dim]

    def feed(self, start: int, stop: int) -> dict[str, np.ndarray]:
        """The encoder's inputs for images start..stop (and their y)."""
        feed = {IMAGES: self.images[start:stop]}
        if self.y is not None:
            feed[Y] = self.y[start:stop]
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
    """Stored dataset pixels (uint8) -> [0, 1] by the contract's one value step; float arrays as they are."""
    if x.dtype == np.uint8:
        return to_unit_float(x)
    return np.ascontiguousarray(x, dtype=np.float32)


def read_images(path: Path, cfg: Config) -> ImageSet:
    """Images from a folder (any size: the contract's preprocessing, so exactly the arrays the training loader
    and ``alitool encode`` make of the same files) or a .npy array [N, *input shape]."""
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
    from alitool.data.imagefiles import ImageSource

    # The training loader's own listing (recursive, hidden files and folders left out), so that a folder
    # calibrates on exactly the images it would train on.
    files = [path / name for name in ImageSource(path).list_images()]
    if not files:
        raise UserError(f"--calib {path}: no images ({', '.join(IMAGE_EXTENSIONS)}) in that folder")
    pre = Preprocess.from_config(cfg.data)
    images, skipped = [], []
    for file in files:
        try:
            images.append(load_pixels(file, pre))
        except BadInput:
            skipped.append(file.name)
    if not images:
        raise UserError(f"--calib {path}: none of the {len(files)} files could be decoded as images")
    note = f", {len(skipped)} unreadable skipped" if skipped else ""
    return ImageSet(to_unit_float(np.stack(images)), f"folder {path}, {len(images)} images{note}")


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


def quantize_encoder(fp32_path: Path, int8_path: Path, calibration: ImageSet,
                     scheme: str | Int8Scheme = DEFAULT_SCHEME) -> Int8Scheme:
    """Write a static INT8 (QDQ, per-channel weights, ``scheme``'s number formats) copy of ``fp32_path``.

    The copy has the latent outputs only (z_mean, z_log_sigma), not the section 4.3 ``features``: tapping the
    hidden layers for them kept ONNX Runtime from fusing the last layers into int8 kernels (SVHN architecture,
    one thread: 1,070 images per CPU-second with ``features``, 2,570 without). The fp32 file keeps them.
    """
    import_onnxruntime()
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quant_pre_process, quantize_static

    scheme = int8_scheme(scheme)
    types = {"int8": QuantType.QInt8, "uint8": QuantType.QUInt8}
    meta, values = read_meta(fp32_path)
    if values.get(GRAPH_KEY) != "encoder":
        raise UserError(f"{fp32_path}: INT8 quantisation applies to the encoder file ({ENCODER_ONNX})")
    if len(calibration.images) == 0:
        raise UserError("no calibration images")
    int8_path = Path(int8_path)
    int8_path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=int8_path.parent, prefix=".quantize.") as tmp:
        latent_only, prepared, quantized = (Path(tmp) / n for n in ("latent.onnx", "prepared.onnx", "int8.onnx"))
        onnx.save(without_outputs(onnx.load(str(fp32_path)), {FEATURES}), str(latent_only))
        quant_pre_process(str(latent_only), str(prepared), skip_symbolic_shape=False)
        quantize_static(
            str(prepared), str(quantized), _reader(calibration),
            quant_format=QuantFormat.QDQ, per_channel=True, reduce_range=scheme.reduce_range,
            activation_type=types[scheme.activations], weight_type=types[scheme.weights],
            calibrate_method=CalibrationMethod.MinMax,
            nodes_to_exclude=float_output_nodes(prepared) + condition_nodes(prepared),
            # The TensorRT schemes: zero points of 0 (z_mean cosine 0.9990 vs 0.9994 asymmetric on trained digits)
            # and float biases are what its explicit quantisation accepts, so one file serves both runtimes
            # (TensorRT refuses an int32 DequantizeLinear; ONNX Runtime's CPU speed measured the same either way).
            extra_options={"ActivationSymmetric": scheme.symmetric, "WeightSymmetric": scheme.symmetric,
                           "QuantizeBias": scheme.int32_bias},
        )
        model = onnx.load(str(quantized))
    prune_opset_imports(model)
    set_metadata(model, meta, "encoder", precision="int8", extra={
        "alitool.calibration": calibration.source,
        INT8_SCHEME_KEY: scheme.name,
        QUANTIZATION_KEY: scheme.describe(),
    })
    save_model(model, int8_path)
    return scheme


def prune_opset_imports(model: onnx.ModelProto) -> onnx.ModelProto:
    """Declare only the operator domains the graph's nodes use (and the default one).

    ONNX Runtime's quantiser declares every domain it knows (ai.onnx.ml, com.microsoft, org.pytorch.aten, ...)
    on a graph whose nodes are all standard ONNX; a runtime built with fewer operator sets (ONNX Runtime Mobile's
    reduced builds, other runtimes) need not know them, and a reader should not wonder where they are used.
    """
    used = {""}

    def visit(graph: onnx.GraphProto) -> None:
        for node in graph.node:
            used.add(node.domain or "")
            for attribute in node.attribute:
                if attribute.type == onnx.AttributeProto.GRAPH:
                    visit(attribute.g)
                for sub in attribute.graphs:
                    visit(sub)

    visit(model.graph)
    for function in model.functions:
        used.add(function.domain)
        used.update(node.domain or "" for node in function.node)
    kept = [o for o in model.opset_import if (o.domain or "") in used or o.domain == "ai.onnx"]
    del model.opset_import[:]
    model.opset_import.extend(kept)
    return model


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
    return [node.name for node in model.graph.node if Y in node.input]


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
            session.run([Z_MEAN], heldout.feed(i, i + 256))[0] for i in range(0, len(heldout.images), 256)
        ]))
    return z_mean_fidelity(outputs[0], outputs[1], heldout.source)


def scheme_note(scheme: Int8Scheme) -> str:
    """The line the export prints after quantising: where the file's features are faithful."""
    return f"INT8 scheme {scheme.name}: {scheme.describe().split(': ', 1)[1]}; faithful on {scheme.safe_on}"


def low_fidelity_advice(fidelity: Fidelity, scheme: Int8Scheme, calibration_images: int) -> str | None:
    """None when ``fidelity`` meets the floor; else one warning line naming the likely cause and what helps.

    The fidelity is measured on this CPU. A full-range scheme on x86 without VNNI/AMX saturates (the cause, and
    more calibration images cannot help); otherwise the cause is the model's ranges or the calibration images,
    and more calibration helps only while there are fewer than MinMax needs.
    """
    if not fidelity.images or fidelity.cosine_mean >= FIDELITY_FLOOR:
        return None
    head = f"warning: INT8 z_mean cosine similarity {fidelity.cosine_mean:.4f} is below {FIDELITY_FLOOR}"
    dot = has_int8_dot_product()
    if scheme.full_range_int8_weights and dot is False:
        return (f"{head}; likely cause: scheme {scheme.name} keeps full-range 8-bit weights, and this CPU "
                f"({describe_int8_support()}) has no VNNI/AMX, so ONNX Runtime's int8 kernels add its products in "
                f"saturating 16-bit sums. Use --int8-scheme {DEFAULT_SCHEME} (7-bit weights, faithful on every "
                f"CPU) or encoder.onnx (fp32)")
    cpu = ("this CPU's int8 kernels do not saturate" if dot else
           f"scheme {scheme.name} cannot saturate this CPU's int8 kernels" if dot is False else
           "this CPU's int8 kernels could not be told (no /proc/cpuinfo)")
    helps = []
    if calibration_images < USEFUL_CALIBRATION_IMAGES:
        helps.append(f"calibrating on more images (--calib {USEFUL_CALIBRATION_IMAGES}) or on images like those "
                     f"you will encode (--calib FOLDER)")
    if scheme.reduce_range and dot:
        helps.append("--int8-scheme vnni (8-bit weights; only for x86 with VNNI/AMX, ARM64 and TensorRT)")
    helps.append("encoder.onnx (fp32)")
    return f"{head} ({cpu}: the model's value ranges are hard to cover with 8 bits); try " + ", or ".join(helps)
