"""The ONNX Runtime backend: provider choice, which files a path opens, mismatched pairs, device errors."""

from __future__ import annotations

import shutil

import numpy as np
import onnxruntime as ort
import pytest
import torch
from helpers import TINY_CONV, trained_like

from alitool.backends import load_backend
from alitool.backends.onnx_backend import OnnxBackend, pick_providers, resolve_onnx_files
from alitool.config import load_config
from alitool.errors import UserError
from alitool.export.onnx import export_networks
from alitool.trained_networks import meta_from_config

GPU_BUILD = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]


def test_provider_priority_tensorrt_then_cuda_then_cpu():
    assert pick_providers("auto", list(reversed(GPU_BUILD))) == GPU_BUILD
    assert pick_providers("auto", ["CUDAExecutionProvider", "CPUExecutionProvider"]) == GPU_BUILD[1:]
    assert pick_providers("cuda", GPU_BUILD) == GPU_BUILD[1:]
    assert pick_providers("tensorrt", GPU_BUILD) == GPU_BUILD
    assert pick_providers("cpu", GPU_BUILD) == ["CPUExecutionProvider"]
    # this machine's real onnxruntime
    assert pick_providers("auto", ort.get_available_providers())[-1] == "CPUExecutionProvider"


def test_gpu_request_without_gpu_provider_is_one_clear_error():
    with pytest.raises(UserError, match=r"no CUDAExecutionProvider .* install alitool\[gpu\]"):
        pick_providers("cuda:0", ["CPUExecutionProvider"])
    with pytest.raises(UserError, match="expected auto, cpu"):
        pick_providers("tpu", GPU_BUILD)


def _export(folder, seed=0):
    cfg = load_config("digits", TINY_CONV)
    torch.manual_seed(seed)
    model = trained_like(cfg)
    meta = meta_from_config(cfg, source_sha256=f"{seed:064d}")
    return export_networks(model.encoder, model.decoder, meta, folder, exporter="torchscript", log=lambda _: None)


def test_paths_open_the_right_files(tmp_path):
    pair = _export(tmp_path / "run" / "export")
    shutil.copy(pair.encoder_path, pair.encoder_path.with_name("encoder.int8.onnx"))  # stands beside it
    assert resolve_onnx_files(tmp_path / "run") == (pair.encoder_path, pair.decoder_path)  # fp32 first
    assert resolve_onnx_files(pair.decoder_path) == (pair.encoder_path, pair.decoder_path)
    int8 = pair.encoder_path.with_name("encoder.int8.onnx")
    assert resolve_onnx_files(int8) == (int8, pair.decoder_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no encoder.onnx or decoder.onnx"):
        resolve_onnx_files(tmp_path / "empty")
    alone = tmp_path / "alone"
    alone.mkdir()
    shutil.copy(pair.decoder_path, alone / "decoder.onnx")
    decoder_only = OnnxBackend(alone / "decoder.onnx", device="cpu")
    assert not decoder_only.meta.has_encoder and decoder_only.decode(np.zeros((2, 4), np.float32)).shape == (2, 1, 8, 8)
    with pytest.raises(UserError, match="no encoder.onnx next to the decoder"):
        decoder_only.encode(np.zeros((2, 1, 8, 8), np.float32))


def test_encoder_and_decoder_from_different_checkpoints_are_refused(tmp_path):
    first, second = _export(tmp_path / "a", seed=1), _export(tmp_path / "b", seed=2)
    shutil.copy(second.decoder_path, first.decoder_path)
    with pytest.raises(UserError, match="come from different checkpoints"):
        load_backend(first.encoder_path)


def test_backend_flag_overrides_the_guess_and_describe_reports_providers(tmp_path):
    pair = _export(tmp_path)
    backend = load_backend(tmp_path, backend="onnxruntime", device="cpu", threads=2)
    line = backend.describe()
    assert "providers in use: CPUExecutionProvider" in line and "encoder.onnx (fp32)" in line
    assert backend.sessions["encoder"].get_providers() == ["CPUExecutionProvider"]
    with pytest.raises(UserError, match="unknown backend"):
        load_backend(pair.encoder_path, backend="openvino")
