"""TensorRT engines from the exported ONNX encoder G_z(x) and decoder G_x(z) (paper section 2).

One code path for TensorRT 10.x and 11.x, branching on the major version where their APIs differ:
- 10.x: weakly typed networks by default; FP16 through ``BuilderFlag.FP16``. An INT8 (QDQ) ONNX is built as a
  strongly typed network, so that TensorRT follows its Q/DQ nodes exactly (explicit quantisation).
- 11.x: every network is strongly typed and the FP16/INT8 builder flags are gone. FP16 means converting the ONNX
  to float16 first (inputs and outputs kept float32); INT8 means the QDQ ONNX written by ``alitool export --int8``.
Both: ONNX parser -> builder config with a workspace limit -> one optimization profile for the dynamic batch
(min 1, opt = max = ``--batch``) -> ``build_serialized_network``. A JSON sidecar next to each engine records the
TensorRT version, GPU, compute capability, precision and profile; the backend refuses mismatches.

A conditional model (paper section 4.4) has a second input ``y`` [N, y_dim]: the profile gives every input the
same batch range (written without a GPU to run it here: untested until a GPU machine runs tests/test_export_tensorrt).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

from alitool import __version__
from alitool.atomic import atomic_write_bytes
from alitool.checkpoint import file_sha256
from alitool.contract.engines import sidecar_path
from alitool.errors import UserError
from alitool.export.onnx import read_meta
from alitool.tensorrt_support import TensorRTUnavailable, cuda_gpu, import_tensorrt, trt_major

PRECISIONS = ("fp32", "fp16", "int8")
WORKSPACE_BYTES = 2 << 30


def engine_name(graph: str, precision: str) -> str:
    return f"{graph}.engine" if precision == "fp32" else f"{graph}.{precision}.engine"


def require_tensorrt(ready: str = ""):
    """TensorRT and a CUDA GPU, or one line (``TensorRTUnavailable``) saying which is missing and what is ready."""
    trt = import_tensorrt(ready)
    gpu = cuda_gpu(ready)
    return trt, gpu


def build_engine(onnx_path: Path, engine_path: Path, precision: str, batch: int, ready: str = "",
                 log: Callable[[str], None] = print) -> dict:
    """Build ``engine_path`` from ``onnx_path``; returns the sidecar written next to it."""
    if precision not in PRECISIONS:
        raise UserError(f"unknown TensorRT precision {precision!r}; expected one of {', '.join(PRECISIONS)}")
    if batch < 1:
        raise UserError(f"--batch {batch}: must be at least 1")
    trt, gpu = require_tensorrt(ready)
    major = trt_major(trt.__version__)
    if major < 10:
        raise UserError(f"TensorRT {trt.__version__} is too old: alitool builds engines with TensorRT 10 or 11")
    meta, values = read_meta(onnx_path)
    graph = values.get("alitool.graph", "encoder")
    if precision == "int8" and values.get("alitool.precision") != "int8":
        raise UserError(f"{onnx_path}: INT8 engines are built from the QDQ file (encoder.int8.onnx): "
                        f"run `alitool export --int8 --trt`")
    model_bytes = Path(onnx_path).read_bytes()
    if precision == "fp16" and major >= 11:
        model_bytes = _float16_onnx(model_bytes)

    logger = trt.Logger(trt.Logger.WARNING)
    try:
        builder = trt.Builder(logger)
    except TypeError:  # "pybind11::init(): factory function returned nullptr": CUDA failed to initialise
        raise TensorRTUnavailable(f"TensorRT needs a CUDA GPU; CUDA failed to initialise here{ready}") from None
    flags = 0
    if major == 10 and precision == "int8":
        flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(model_bytes):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise UserError(f"{onnx_path}: TensorRT's ONNX parser refused it: {errors[:400]}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, WORKSPACE_BYTES)
    if major == 10 and precision == "fp16":
        config.set_flag(trt.BuilderFlag.FP16)
    if precision == "fp32" and hasattr(trt.BuilderFlag, "TF32"):
        # TF32 is on by default on Ampere and later (10-bit mantissa): an "fp32" engine should match PyTorch.
        config.clear_flag(trt.BuilderFlag.TF32)
    # One profile, the same batch range for every input (images or z, and a conditional model's y).
    profile = builder.create_optimization_profile()
    input_shapes = {}
    for i in range(network.num_inputs):
        tensor = network.get_input(i)
        rest = tuple(tensor.shape)[1:]
        input_shapes[tensor.name] = {"min": (1, *rest), "opt": (batch, *rest), "max": (batch, *rest)}
        profile.set_shape(tensor.name, *input_shapes[tensor.name].values())
    config.add_optimization_profile(profile)
    tensor = network.get_input(0)
    shapes = input_shapes[tensor.name]

    log(f"building {engine_path.name} ({precision}, TensorRT {trt.__version__}, {gpu['gpu_name']}); "
        f"this takes a while...")
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise UserError(f"TensorRT could not build an engine from {onnx_path} (see TensorRT's messages above)")
    data = bytes(serialized)
    atomic_write_bytes(engine_path, lambda f: f.write(data))
    sidecar = {
        "graph": graph,
        "precision": precision,
        "tensorrt_version": trt.__version__,
        **gpu,
        "profile": {"input": tensor.name, **{k: list(v) for k, v in shapes.items()},
                    "inputs": {name: {k: list(v) for k, v in s.items()} for name, s in input_shapes.items()}},
        "onnx": Path(onnx_path).name,
        "onnx_sha256": file_sha256(onnx_path),
        "built": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "alitool_version": __version__,
        "meta": meta.to_json(),
    }
    text = json.dumps(sidecar, indent=2).encode()
    atomic_write_bytes(sidecar_path(engine_path), lambda f: f.write(text))
    return sidecar


def _float16_onnx(model_bytes: bytes) -> bytes:
    """float16 weights and compute with float32 inputs/outputs: TensorRT 11's route to an FP16 engine."""
    import onnx

    try:
        from onnxruntime.transformers.float16 import convert_float_to_float16
    except ImportError:
        raise UserError("FP16 engines on TensorRT 11 need onnxruntime's float16 converter: "
                        "pip install 'alitool[gpu]' (or 'alitool[cpu]')") from None
    model = onnx.load_from_string(model_bytes)
    return convert_float_to_float16(model, keep_io_types=True).SerializeToString()
