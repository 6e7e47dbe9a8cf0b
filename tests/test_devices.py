"""--device and the default model: the GPU index reaches ONNX Runtime's CUDA and TensorRT providers, TensorRT
engines refuse the CPU, the PyTorch backend says in one line that no CUDA device is usable, the default model
follows --backend, and every inference command names its model on stdout. CUDA paths: ``pytest -m gpu``."""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from helpers import digit_images, invoke_cli, save_tiny_model

from alitool.backends import load_backend
from alitool.backends.onnx_backend import cuda_index, pick_providers, provider_options
from alitool.backends.tensorrt_backend import engine_device_index
from alitool.backends.torch_backend import torch_device
from alitool.errors import UserError
from alitool.runs import default_model, resolve_model

HAS_CUDA = torch.cuda.is_available()
ALL = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
gpu = pytest.mark.gpu
needs_cuda = pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU")


# ---- ONNX Runtime: the providers and their options ------------------------------------------------------------

def test_cuda_n_passes_the_device_id_to_the_cuda_and_tensorrt_providers(tmp_path):
    model = tmp_path / "encoder.onnx"
    assert pick_providers("cuda:1", ALL) == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert provider_options("CUDAExecutionProvider", "cuda:1", model) == {"device_id": 1}
    trt = provider_options("TensorrtExecutionProvider", "cuda:2", model)
    assert trt["device_id"] == 2 and trt["trt_engine_cache_enable"] == "True"
    assert provider_options("CPUExecutionProvider", "cuda:1", model) == {}
    # no index: ONNX Runtime's default GPU (0), nothing passed
    assert provider_options("CUDAExecutionProvider", "cuda", model) == {}
    assert "device_id" not in provider_options("TensorrtExecutionProvider", "tensorrt", model)
    assert provider_options("CUDAExecutionProvider", "auto", model) == {}
    assert [cuda_index(d) for d in ("auto", "cpu", "cuda", "cuda:0", "cuda:7", "tensorrt")] == \
        [None, None, None, 0, 7, None]


@pytest.mark.parametrize("device", ["cuda:x", "gpu", "cuda1", "cuda:-1", "cudax"])
def test_a_malformed_device_is_one_line(device):
    with pytest.raises(UserError, match="expected auto, cpu, cuda, cuda:N"):
        pick_providers(device, ALL)


def test_a_gpu_the_build_lacks_is_refused():
    with pytest.raises(UserError, match="no CUDAExecutionProvider"):
        pick_providers("cuda:1", ["CPUExecutionProvider"])


# ---- TensorRT: cuda:N honoured, cpu refused ---------------------------------------------------------------------

def test_tensorrt_takes_a_gpu_index_and_refuses_the_cpu(tmp_path):
    assert [engine_device_index(d) for d in ("auto", "cuda", "tensorrt", "cuda:0", "cuda:3")] == \
        [None, None, None, 0, 3]
    with pytest.raises(UserError, match="TensorRT engines take auto, cuda or cuda:N"):
        engine_device_index("cuda:one")
    engine = tmp_path / "encoder.engine"
    engine.write_bytes(b"not an engine")
    with pytest.raises(UserError, match="--device cpu: TensorRT engines run on a CUDA GPU only") as err:
        load_backend(engine, device="cpu")  # refused before TensorRT or the file are touched
    assert "\n" not in str(err.value)


# ---- PyTorch: no CUDA is one line, before the checkpoint is read ------------------------------------------------

@pytest.mark.skipif(HAS_CUDA, reason="this machine has CUDA")
def test_torch_on_cuda_without_cuda_says_so(tmp_path):
    checkpoint = save_tiny_model(tmp_path / "run" / "checkpoint.pt")
    for device in ("cuda", "cuda:1"):
        with pytest.raises(UserError, match=f"--device {device}: no CUDA device is usable here"):
            load_backend(checkpoint, backend="torch", device=device)
    cv2.imwrite(str(tmp_path / "x.png"), digit_images(1)[0])
    result = invoke_cli("encode", tmp_path / "x.png", "--out", tmp_path / "f.npy", "--model", checkpoint,
                        "--backend", "torch", "--device", "cuda")
    assert result.exit_code == 2
    assert result.stderr.startswith("error: --device cuda: no CUDA device is usable here")
    assert len(result.stderr.splitlines()) == 1 and "corrupt" not in result.stderr


def test_torch_device_names():
    assert torch_device("cpu") == torch.device("cpu")
    assert torch_device("auto") == torch.device("cuda" if HAS_CUDA else "cpu")
    with pytest.raises(UserError, match="the PyTorch backend takes auto, cpu, cuda or cuda:N"):
        torch_device("tensorrt")


# ---- the default model follows --backend ------------------------------------------------------------------------

def _run(root: Path, name: str, mtime: float, export: str | None = None) -> Path:
    run = root / name
    (run / "export").mkdir(parents=True)
    (run / "checkpoint.pt").write_bytes(b"")
    os.utime(run / "checkpoint.pt", (mtime, mtime))
    if export:
        (run / "export" / export).write_bytes(b"")
        os.utime(run / "export" / export, (mtime, mtime))
    return run


def test_the_default_model_follows_the_backend(tmp_path):
    root = tmp_path / "runs"
    exported = _run(root, "exported", 1e9, "encoder.onnx")
    fresh = _run(root, "fresh", 2e9)  # newer, trained, not exported
    assert default_model(root, "torch") == fresh
    assert default_model(root, "onnxruntime") == default_model(root, "onnx") == exported / "export"
    assert default_model(root, "auto") == exported / "export"  # onnxruntime is installed here
    assert resolve_model(None, root, backend="torch") == fresh
    with pytest.raises(UserError, match=r"no run with export/encoder.engine .*: alitool export --trt"):
        default_model(root, "tensorrt")
    engines = _run(root, "engines", 3e9, "encoder.fp16.engine")
    assert default_model(root, "trt") == engines / "export"
    with pytest.raises(UserError, match="no run with export/encoder.onnx under .*: alitool export"):
        default_model(tmp_path / "other", "onnx")


def test_encode_with_backend_torch_takes_the_newest_checkpoint(tmp_path, monkeypatch):
    """A run with an export folder: --backend torch without --model opens its checkpoint, not the export."""
    monkeypatch.chdir(tmp_path)
    save_tiny_model(tmp_path / "runs" / "digits" / "checkpoint.pt")
    (tmp_path / "runs" / "digits" / "export").mkdir()
    (tmp_path / "runs" / "digits" / "export" / "encoder.onnx").write_bytes(b"never opened")
    cv2.imwrite("x.png", digit_images(1)[0])
    result = invoke_cli("encode", "x.png", "--out", "f.npy", "--backend", "torch")
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith(f"model: {os.path.join('runs', 'digits')} (torch, 8x8x1")
    assert np.load("f.npy").shape == (1, 4)


@pytest.mark.parametrize("command", ["encode", "reconstruct", "interpolate", "sample"])
def test_every_inference_command_names_its_model_on_stdout(tmp_path, command):
    checkpoint = save_tiny_model(tmp_path / "run" / "checkpoint.pt")
    image = tmp_path / "x.png"
    cv2.imwrite(str(image), digit_images(1)[0])
    args = {"encode": [image, "--out", tmp_path / "f.npy"], "reconstruct": [image, "--out", tmp_path / "r.png"],
            "interpolate": [image, image, "--out", tmp_path / "i.png"],
            "sample": ["--n", 2, "--out", tmp_path / "s.png"]}
    result = invoke_cli(command, *args[command], "--model", checkpoint)
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[0] == f"model: {checkpoint} (torch, 8x8x1, latent 4)"
    assert "model:" not in result.stderr


def test_no_encode_help_example_asks_an_int8_file_for_paper_features():
    help_text = invoke_cli("encode", "--help").output
    examples = [line for line in help_text.splitlines() if line.strip().startswith("alitool encode")]
    assert any("int8" in line for line in examples) and any("--features paper" in line for line in examples)
    assert not [line for line in examples if "int8" in line and "--features paper" in line]


# ---- on a GPU ---------------------------------------------------------------------------------------------------

@gpu
@needs_cuda
def test_torch_on_a_gpu_index_matches_the_cpu(tmp_path):
    checkpoint = save_tiny_model(tmp_path / "run" / "checkpoint.pt")
    x = np.random.default_rng(0).random((5, 1, 8, 8), dtype=np.float32)
    cpu = load_backend(checkpoint, backend="torch", device="cpu").encode(x)
    last = torch.cuda.device_count() - 1
    on_gpu = load_backend(checkpoint, backend="torch", device=f"cuda:{last}")
    assert on_gpu.device == torch.device("cuda", last)
    np.testing.assert_allclose(on_gpu.encode(x), cpu, atol=1e-4)
    with pytest.raises(UserError, match="CUDA device"):
        torch_device(f"cuda:{last + 1}")


@gpu
@needs_cuda
def test_onnxruntime_runs_on_the_gpu_it_is_given(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        pytest.skip("onnxruntime without the CUDA provider")
    checkpoint = save_tiny_model(tmp_path / "run" / "checkpoint.pt")
    result = invoke_cli("export", checkpoint, "--out", tmp_path / "run" / "export", "--exporter", "torchscript")
    assert result.exit_code == 0, result.output
    last = torch.cuda.device_count() - 1
    backend = load_backend(tmp_path / "run" / "export", device=f"cuda:{last}")
    session = backend.sessions["encoder"]
    assert session.get_providers()[0] == "CUDAExecutionProvider"
    assert session.get_provider_options()["CUDAExecutionProvider"]["device_id"] == str(last)
