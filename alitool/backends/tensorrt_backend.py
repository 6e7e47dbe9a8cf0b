"""TensorRT backend: ALI's encoder G_z(x) / decoder G_x(z) (paper section 2) as serialized TensorRT engines.

Works with TensorRT 10.x and 11.x: only the name-based tensor API (``num_io_tensors``, ``set_input_shape``,
``set_tensor_address``, ``execute_async_v3``) is used, which both have. Device memory and the CUDA stream come
from PyTorch (already an alitool dependency), so no pycuda / cuda-python is needed.

An engine only runs on the TensorRT version and GPU it was built for. The JSON sidecar written next to each
engine (``encoder.engine.json``) records both, and a mismatch is refused with a clear message instead of
TensorRT's deserialisation error.

A conditional model's engines (paper section 4.4) have a second input ``y`` [N, y_dim] next to ``images`` or
``z``; every input is fed by name. (Written against the TensorRT API without a GPU to run it here: untested.)
"""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path

import numpy as np

from alitool.backends import check_condition, check_kind
from alitool.backends.onnx_backend import check_batch
from alitool.contract.engines import read_sidecar
from alitool.contract.meta import sample_posterior
from alitool.errors import UserError
from alitool.tensorrt_support import cuda_gpu, import_tensorrt

PRECISION_ORDER = ("fp32", "fp16", "int8")  # which engine a folder opens first


def check_engine_compatible(info: dict, engine: Path, trt_version: str, gpu: dict[str, str]) -> None:
    """Refuse an engine built by another TensorRT version or for another GPU (engines are not portable)."""
    built = info.get("tensorrt_version", "?")
    if built != trt_version:
        raise UserError(f"{engine}: built with TensorRT {built}, this is TensorRT {trt_version}; engines only load "
                        f"in the version that built them: rebuild here with `alitool export --trt`")
    for key, label in (("compute_capability", "compute capability"), ("gpu_name", "GPU")):
        if info.get(key) != gpu[key]:
            raise UserError(f"{engine}: built for {label} {info.get(key)!r} ({info.get('gpu_name')}), this machine "
                            f"has {gpu[key]!r} ({gpu['gpu_name']}); rebuild here with `alitool export --trt`")


def engine_device_index(device: str) -> int | None:
    """The GPU of ``--device`` for TensorRT engines: N for "cuda:N", None (the current GPU) for "auto", "cuda" and
    "tensorrt"; "cpu" and anything else are one line, since an engine runs on a CUDA GPU only."""
    if device == "cpu":
        raise UserError("--device cpu: TensorRT engines run on a CUDA GPU only; on a CPU open the ONNX files "
                        "instead (--model <run>/export, --backend onnxruntime)")
    match = re.fullmatch(r"cuda(?::(\d+))?", device)
    if match:
        return int(match.group(1)) if match.group(1) is not None else None
    if device in ("auto", "tensorrt"):
        return None
    raise UserError(f"--device {device!r}: TensorRT engines take auto, cuda or cuda:N (N the GPU index)")


def resolve_engines(path: str | Path) -> dict[str, Path]:
    """{"encoder": file, "decoder": file} for an engine file (its sibling is found by name) or a folder."""
    path = Path(path)
    if path.is_dir():
        folder = path / "export" if (path / "export").is_dir() else path
        found = {g: _first_engine(folder, g) for g in ("encoder", "decoder")}
        if not any(found.values()):
            raise UserError(f"{folder}: no TensorRT engines there; build them with `alitool export --trt`")
        return {g: f for g, f in found.items() if f}
    if not path.is_file():
        raise UserError(f"{path}: no such engine file")
    graph = read_sidecar(path).get("graph", "encoder")
    other = "decoder" if graph == "encoder" else "encoder"
    found = {graph: path}
    sibling = _first_engine(path.parent, other)
    if sibling:
        found[other] = sibling
    return found


def _first_engine(folder: Path, graph: str) -> Path | None:
    names = [f"{graph}.engine"] + [f"{graph}.{p}.engine" for p in PRECISION_ORDER]
    return next((folder / n for n in names if (folder / n).is_file()), None)


class TensorRTBackend:
    name = "tensorrt"

    def __init__(self, path: str | Path, device: str = "auto"):
        index = engine_device_index(device)
        files = resolve_engines(path)
        trt = import_tensorrt()
        import torch

        if index is not None:
            if torch.cuda.is_available() and index >= torch.cuda.device_count():
                raise UserError(f"--device {device}: this machine has {torch.cuda.device_count()} CUDA device(s), "
                                f"numbered from 0")
            if torch.cuda.is_available():
                torch.cuda.set_device(index)  # engines are deserialised and run on the current device
        gpu = cuda_gpu()  # the GPU the engines will run on: the sidecar check compares against it
        self.device = torch.device("cuda", torch.cuda.current_device())
        self.stream = torch.cuda.Stream(self.device)
        self.runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self.engines, self.contexts, self.info = {}, {}, {}
        for graph, file in files.items():
            info = read_sidecar(file)
            check_engine_compatible(info, file, trt.__version__, gpu)
            engine = self.runtime.deserialize_cuda_engine(file.read_bytes())
            if engine is None:
                raise UserError(f"{file}: TensorRT could not deserialize this engine (corrupt file?)")
            self.engines[graph], self.info[graph] = engine, info
            self.contexts[graph] = engine.create_execution_context()
        metas = {g: i["meta"] for g, i in self.info.items()}
        if len(metas) == 2 and metas["encoder"].source_sha256 != metas["decoder"].source_sha256:
            raise UserError(f"{files['encoder']} and {files['decoder']} come from different checkpoints; "
                            f"build them again together with `alitool export --trt`")
        base = metas.get("encoder") or metas["decoder"]
        self.meta = replace(base, has_encoder="encoder" in metas, has_decoder="decoder" in metas)
        self.files = files
        self.rng = np.random.default_rng()
        encoder = self.engines.get("encoder")
        # Whether encode(kind="z") draws from q(z|x): only an engine with a z_log_sigma output has a sigma to draw with.
        self.draws_posterior_samples = encoder is not None and "z_log_sigma" in {
            encoder.get_tensor_name(i) for i in range(encoder.num_io_tensors)}

    def describe(self) -> str:
        parts = [f"{f.name} ({self.info[g]['precision']}, batch <= {self.max_batch(g)})" for g, f in self.files.items()]
        first = next(iter(self.info.values()))
        return f"TensorRT {first['tensorrt_version']} on {first['gpu_name']}: {', '.join(parts)}"

    def max_batch(self, graph: str) -> int:
        return int(self.info[graph]["profile"]["max"][0])

    def _run(self, graph: str, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run ``graph`` on the arrays of ``feed`` (input name -> [N, ...], same N) in chunks of the engine's
        largest profile batch; all outputs, as NumPy."""
        import tensorrt as trt
        import torch

        engine, context = self.engines[graph], self.contexts[graph]
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outputs = [n for n in names if n not in inputs]
        if sorted(inputs) != sorted(feed):
            raise UserError(f"{self.files[graph]}: the engine takes inputs {', '.join(inputs)}, not "
                            f"{', '.join(feed)}")
        count = len(next(iter(feed.values())))
        results: dict[str, list[np.ndarray]] = {n: [] for n in outputs}
        step = self.max_batch(graph)
        # A stream of our own: TensorRT warns that the default stream costs extra synchronisation. The engine runs
        # on the current device, so make it ours (another --device may have been chosen since).
        with torch.cuda.device(self.device), torch.cuda.stream(self.stream):
            for start in range(0, count, step):
                held = []  # keep the input tensors alive until the engine has run
                for name in inputs:
                    x = torch.from_numpy(feed[name][start : start + step]).to(self.device)
                    x = x.to(_torch_dtype(engine.get_tensor_dtype(name))).contiguous()
                    context.set_input_shape(name, tuple(x.shape))
                    context.set_tensor_address(name, x.data_ptr())
                    held.append(x)
                buffers = {}
                for name in outputs:
                    dtype = _torch_dtype(engine.get_tensor_dtype(name))
                    buffers[name] = torch.empty(tuple(context.get_tensor_shape(name)), dtype=dtype, device=self.device)
                    context.set_tensor_address(name, buffers[name].data_ptr())
                if not context.execute_async_v3(self.stream.cuda_stream):
                    raise UserError(f"{self.files[graph]}: TensorRT failed to run the engine")
                for name in outputs:
                    results[name].append(buffers[name].float().cpu().numpy())  # .cpu() waits for the stream
        return {n: np.concatenate(parts) if parts else np.zeros((0,), np.float32) for n, parts in results.items()}

    def _feed(self, name: str, array: np.ndarray, y: np.ndarray | None) -> dict[str, np.ndarray]:
        y = check_condition(self.meta, y, len(array))
        return {name: array} if y is None else {name: array, "y": y}

    def encode(self, images: np.ndarray, kind: str = "mean", y: np.ndarray | None = None) -> np.ndarray:
        check_kind(kind)
        if "encoder" not in self.engines:
            raise UserError("no encoder engine next to this decoder engine; cannot encode")
        x = check_batch(images, self.meta.input_shape, "images")
        out = self._run("encoder", self._feed("images", x, y))
        if kind == "paper":
            if "features" not in out:
                raise UserError(f"{self.files['encoder'].name} has no 'features' output (INT8 engines carry z only); "
                                f"use the fp32 or fp16 engine for the paper's SVM features")
            return out["features"]
        if kind == "mean" or "z_log_sigma" not in out:
            return out["z_mean"]
        return sample_posterior(out["z_mean"], out["z_log_sigma"], self.rng)

    def decode(self, z: np.ndarray, y: np.ndarray | None = None) -> np.ndarray:
        if "decoder" not in self.engines:
            raise UserError("no decoder engine next to this encoder engine; cannot decode")
        z = check_batch(z, (self.meta.latent_dim,), "z")
        return self._run("decoder", self._feed("z", z, y))["images"]


def _torch_dtype(trt_dtype):
    import tensorrt as trt
    import torch

    table = {trt.float32: torch.float32, trt.float16: torch.float16, trt.int8: torch.int8, trt.int32: torch.int32}
    if trt_dtype not in table:
        raise UserError(f"engine tensor of type {trt_dtype}, which alitool does not handle")
    return table[trt_dtype]
