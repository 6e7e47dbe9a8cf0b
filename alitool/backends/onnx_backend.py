"""ONNX Runtime backend: the exported encoder G_z(x) / decoder G_x(z) (paper section 2) without PyTorch.

Opens ``encoder.onnx`` / ``encoder.int8.onnx`` / ``decoder.onnx`` (a file, an export folder, or a run folder
with ``export/``), reads the model's metadata from the files, and picks execution providers from those this
onnxruntime build has: TensorRT EP, then CUDA EP, then CPU. What ONNX Runtime actually uses is read back with
``session.get_providers()`` and reported, since a GPU build silently falls back to CPU without CUDA.

A conditional model's files (paper section 4.4) take y as a second input named ``y`` (float32 [N, y_dim]) next
to ``images`` or ``z``; its meaning is in the metadata (``ModelMeta.y_kind``, ``y_names``).

Threads: ``threads`` (``--threads`` of encode and reconstruct) sets each session's intra-op threads; 0 keeps ONNX
Runtime's default, one per physical core. The encode path's ``--workers`` decode threads share those cores: ONNX
Runtime's threads wait between layers and decoding fills part of those gaps (benchmarks/RESULTS.md, encode
pipeline), and no measurement has shown a better default than the runtime's, so 0 stays the default. On a machine
where other processes are busy, a pool that loses a core waits for it at every layer, and 1 thread was much
faster there: that is what ``--threads 1`` is for. (Training chooses its thread count itself: alitool/threads.py.)
"""

from __future__ import annotations

import logging
import re
import tempfile
from dataclasses import replace
from pathlib import Path

import numpy as np

from alitool.backends import check_condition, check_kind
from alitool.contract.meta import ModelMeta, meta_from_metadata, sample_posterior
from alitool.contract.names import DECODER_FILES, ENCODER_FILES, INT8_SCHEME_KEY, Y
from alitool.cpu_features import describe_int8_support, scheme_saturates
from alitool.errors import UserError, one_line

PROVIDER_PRIORITY = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")


def pick_providers(device: str, available: list[str]) -> list[str]:
    """The provider priority list for ``device`` ("auto", "cpu", "cuda[:N]", "tensorrt"), filtered by what
    this onnxruntime build offers; a GPU request that cannot be met is an error, not a silent CPU run."""
    if device == "auto":
        return [p for p in PROVIDER_PRIORITY if p in available]
    if device == "cpu":
        return ["CPUExecutionProvider"]
    cuda_index(device)  # a malformed device is one line before anything else
    wanted = "TensorrtExecutionProvider" if device == "tensorrt" else "CUDAExecutionProvider"
    if wanted not in available:
        raise UserError(f"--device {device}: this onnxruntime has no {wanted} (it has {', '.join(available)}); "
                        f"install alitool[gpu] (onnxruntime-gpu) instead of onnxruntime, on a machine with CUDA")
    return [p for p in PROVIDER_PRIORITY[PROVIDER_PRIORITY.index(wanted):] if p in available]


def cuda_index(device: str) -> int | None:
    """The GPU index of ``device``: N for "cuda:N", None for "auto", "cpu", "cuda" and "tensorrt" (the runtime's
    default GPU, 0); anything else is one line."""
    match = re.fullmatch(r"cuda(?::(\d+))?", device)
    if match:
        return int(match.group(1)) if match.group(1) is not None else None
    if device in ("auto", "cpu", "tensorrt"):
        return None
    raise UserError(f"--device {device!r}: expected auto, cpu, cuda, cuda:N (N the GPU index) or tensorrt")


def provider_options(provider: str, device: str, file: Path) -> dict[str, str | int]:
    """The options of ``provider`` for a session of ``file`` on ``device``: the GPU index of "cuda:N" for the CUDA
    and TensorRT providers ("device_id"; without one ONNX Runtime takes GPU 0), and the TensorRT provider's
    engine cache."""
    options: dict[str, str | int] = {}
    index = cuda_index(device)
    if index is not None and provider in ("CUDAExecutionProvider", "TensorrtExecutionProvider"):
        options["device_id"] = index
    if provider == "TensorrtExecutionProvider":
        options.update(_trt_cache_options(file))
    return options


def resolve_onnx_files(path: str | Path) -> tuple[Path | None, Path | None]:
    """(encoder file, decoder file) for a file, an export folder or a run folder."""
    path = Path(path)
    if path.is_dir():
        folder = path / "export" if (path / "export").is_dir() else path
        encoder = next((folder / n for n in ENCODER_FILES if (folder / n).is_file()), None)
        decoder = next((folder / n for n in DECODER_FILES if (folder / n).is_file()), None)
        if encoder is None and decoder is None:
            raise UserError(f"{folder}: no encoder.onnx or decoder.onnx there; run `alitool export` first")
        return encoder, decoder
    if not path.is_file():
        raise UserError(f"{path}: no such ONNX file")
    if path.name.startswith("decoder"):
        sibling = next((path.parent / n for n in ENCODER_FILES if (path.parent / n).is_file()), None)
        return sibling, path
    sibling = next((path.parent / n for n in DECODER_FILES if (path.parent / n).is_file()), None)
    return path, sibling


class OnnxBackend:
    name = "onnxruntime"

    def __init__(self, path: str | Path, device: str = "auto", threads: int = 0):
        import onnxruntime as ort

        encoder_path, decoder_path = resolve_onnx_files(path)
        self.providers_requested = pick_providers(device, ort.get_available_providers())
        self.device = device
        self.threads = threads
        self.sessions: dict[str, ort.InferenceSession] = {}
        self.files: dict[str, Path] = {}
        self.precision: dict[str, str] = {}
        metas: dict[str, ModelMeta] = {}
        for graph, file in (("encoder", encoder_path), ("decoder", decoder_path)):
            if file is None:
                continue
            session = self._open(ort, file)
            meta, values = _session_meta(session, file)
            if values.get("alitool.graph", graph) != graph:
                raise UserError(f"{file}: holds the {values['alitool.graph']}, not the {graph}")
            self.sessions[graph], self.files[graph], metas[graph] = session, file, meta
            self.precision[graph] = values.get("alitool.precision", "fp32")
            if self.precision[graph] == "int8" and session.get_providers()[0] == "CPUExecutionProvider":
                _warn_if_int8_saturates(file, values.get(INT8_SCHEME_KEY))
        if len(metas) == 2 and metas["encoder"].source_sha256 != metas["decoder"].source_sha256:
            # Files from different checkpoints in one folder: the pair would encode and decode inconsistently.
            raise UserError(f"{self.files['encoder']} and {self.files['decoder']} come from different checkpoints "
                            f"(source sha256 {metas['encoder'].source_sha256[:12]} vs "
                            f"{metas['decoder'].source_sha256[:12]}); export them again together")
        base = metas.get("encoder") or metas["decoder"]
        self.meta = replace(base, has_encoder="encoder" in metas, has_decoder="decoder" in metas)
        self.providers = next(iter(self.sessions.values())).get_providers()
        if any(p not in self.providers for p in self.providers_requested):
            # e.g. onnxruntime-gpu on a machine without a usable CUDA device: it silently runs on CPU.
            logging.getLogger("alitool").warning("note: %s", self.describe())
        # Whether encode(kind="z") draws from q(z|x): only an encoder with a z_log_sigma output has a sigma to draw
        # with (an exported encoder with noise inputs computes G_z(x, 0), its posterior mean).
        self.draws_posterior_samples = "encoder" in self.sessions and "z_log_sigma" in self._outputs("encoder")
        self.rng = np.random.default_rng()

    def _open(self, ort, file: Path):
        options = ort.SessionOptions()
        options.intra_op_num_threads = self.threads  # 0: ONNX Runtime's default (one per physical core)
        # No busy-waiting between operators: alitool always runs the model beside decoding threads on the same
        # cores, and spinning threads take their cycles. 20,000 32x32 PNGs, INT8 SVHN encoder, 2 cores: end to
        # end 6,000 -> 6,800 img/s, though a bare loop of encode() calls loses 15% (benchmarks/RESULTS.md).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3  # errors only: a GPU build's CUDA-missing chatter is reported below
        providers = [(p, provider_options(p, self.device, file)) for p in self.providers_requested]
        try:
            return ort.InferenceSession(str(file), options, providers=providers)
        except Exception as err:  # onnxruntime raises its own Fail/InvalidGraph/... types
            raise UserError(f"{file}: onnxruntime cannot load it: {one_line(err, 200)}") from None

    def _outputs(self, graph: str) -> list[str]:
        return [o.name for o in self.sessions[graph].get_outputs()]

    def describe(self) -> str:
        """One line: files, precision, and the providers ONNX Runtime really uses (not just asked for)."""
        import onnxruntime as ort

        files = ", ".join(f"{f.name} ({self.precision[g]})" for g, f in self.files.items())
        line = f"onnxruntime {ort.__version__}: {files}; providers in use: {', '.join(self.providers)}"
        missing = [p for p in self.providers_requested if p not in self.providers]
        if missing:
            line += f" (asked for {', '.join(missing)} too; unavailable at run time, e.g. no CUDA device)"
        return line + (f"; {self.threads} threads" if self.threads else "")

    def _feed(self, name: str, array: np.ndarray, y: np.ndarray | None) -> dict[str, np.ndarray]:
        """The session inputs: ``name`` -> array, plus ``y`` for a conditional model."""
        y = check_condition(self.meta, y, len(array))
        return {name: array} if y is None else {name: array, Y: y}

    def encode(self, images: np.ndarray, kind: str = "mean", y: np.ndarray | None = None) -> np.ndarray:
        check_kind(kind)
        if "encoder" not in self.sessions:
            raise UserError(f"{self.files['decoder'].parent}: no encoder.onnx next to the decoder; cannot encode")
        feed = self._feed("images", check_batch(images, self.meta.input_shape, "images"), y)
        if kind == "paper":
            if "features" not in self._outputs("encoder"):
                fp32 = self.files["encoder"].with_name("encoder.onnx")
                where = f"--model {fp32}" if fp32.is_file() else "the fp32 encoder.onnx of the same export"
                raise UserError(f"{self.files['encoder'].name} has no 'features' output (the INT8 encoder carries z "
                                f"only); for the paper's SVM features use {where}")
            return self.sessions["encoder"].run(["features"], feed)[0]
        if kind == "mean" or not self.draws_posterior_samples:
            return self.sessions["encoder"].run(["z_mean"], feed)[0]
        z_mean, z_log_sigma = self.sessions["encoder"].run(["z_mean", "z_log_sigma"], feed)
        return sample_posterior(z_mean, z_log_sigma, self.rng)

    def decode(self, z: np.ndarray, y: np.ndarray | None = None) -> np.ndarray:
        if "decoder" not in self.sessions:
            raise UserError(f"{self.files['encoder'].parent}: no decoder.onnx next to the encoder; cannot decode")
        z = check_batch(z, (self.meta.latent_dim,), "z")
        return self.sessions["decoder"].run(["images"], self._feed("z", z, y))[0]


def _trt_cache_options(file: Path) -> dict[str, str]:
    # Building a TensorRT engine takes seconds to minutes: cache it next to the model (or in /tmp when that
    # folder is read-only) so only the first session pays.
    cache = file.parent / ".trt_ep_cache"
    try:
        cache.mkdir(exist_ok=True)
    except OSError:
        cache = Path(tempfile.gettempdir()) / "alitool_trt_ep_cache"
        cache.mkdir(exist_ok=True)
    return {"trt_engine_cache_enable": "True", "trt_engine_cache_path": str(cache)}


_warned_int8: set[Path] = set()


def _warn_if_int8_saturates(file: Path, scheme: str | None) -> None:
    """One warning per file and process where its INT8 scheme is known to return wrong features on this CPU:
    full-range 8-bit weights (or no scheme recorded: an earlier release's file, full-range) on x86 without
    VNNI/AMX, where ONNX Runtime's u8 x s8 kernels add products in saturating 16-bit sums (alitool/cpu_features)."""
    if not scheme_saturates(scheme) or file.resolve() in _warned_int8:
        return
    _warned_int8.add(file.resolve())
    what = f"scheme {scheme}" if scheme else "no scheme recorded: exported before schemes, with 8-bit weights"
    logging.getLogger("alitool").warning(
        "note: %s is INT8 with full-range 8-bit weights (%s); this CPU, %s, has no VNNI/AMX, where ONNX Runtime's "
        "int8 kernels saturate and return wrong features (z_mean cosine 0.92 instead of 0.9998 on digits). "
        "Re-export with `alitool export --int8` (scheme portable) or encode with encoder.onnx",
        file.name, what, describe_int8_support())


def _session_meta(session, file: Path) -> tuple[ModelMeta, dict[str, str]]:
    values = dict(session.get_modelmeta().custom_metadata_map)
    return meta_from_metadata(values, file), values


def check_batch(array: np.ndarray, shape: tuple[int, ...], what: str) -> np.ndarray:
    array = np.ascontiguousarray(array, dtype=np.float32)
    if array.ndim != len(shape) + 1 or tuple(array.shape[1:]) != tuple(shape):
        expected = ", ".join(map(str, shape))
        raise UserError(f"{what} of shape {tuple(array.shape)}; this model takes [N, {expected}]")
    return array
