"""TensorRT: the messages without tensorrt / without a GPU (tested for real here), the engine compatibility
guard, and GPU tests that build and run real engines (``pytest -m gpu`` on a machine with CUDA and tensorrt)."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest
import torch
from helpers import TINY_CONV, alitool_subprocess, make_run

from alitool.backends import load_backend
from alitool.backends.tensorrt_backend import check_engine_compatible, resolve_engines
from alitool.contract.engines import read_sidecar
from alitool.errors import UserError
from alitool.export.pipeline import ExportOptions, export_checkpoint
from alitool.export.quantize import z_mean_fidelity
from alitool.tensorrt_support import TensorRTUnavailable, cuda_gpu

HAS_TENSORRT = importlib.util.find_spec("tensorrt") is not None
HAS_CUDA = torch.cuda.is_available()
gpu = pytest.mark.gpu
needs_gpu = pytest.mark.skipif(not (HAS_CUDA and HAS_TENSORRT), reason="needs a CUDA GPU and tensorrt")


def _export_cli(args, cwd):
    return alitool_subprocess("export", *args, cwd=cwd)


@pytest.mark.slow
@pytest.mark.skipif(HAS_TENSORRT, reason="tensorrt is installed here")
def test_without_tensorrt_one_line_says_how_to_install(tmp_path):
    run, _ = make_run(tmp_path)
    result = _export_cli([str(run), "--trt", "--exporter", "torchscript"], tmp_path)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "TensorRT is not installed" in lines[0] and "pip install 'alitool[trt]'" in lines[0]
    assert "the ONNX files are ready" in lines[0] and "encoder.onnx" in lines[0]
    assert (run / "export" / "encoder.onnx").is_file() and (run / "export" / "decoder.onnx").is_file()


@pytest.mark.skipif(HAS_TENSORRT, reason="tensorrt is installed here")
def test_without_tensorrt_the_export_keeps_its_onnx_files_and_names_them(tmp_path):
    """The same path in this process (the fast tier): the ONNX export finishes, then building engines stops with
    one line naming what is ready."""
    from alitool.export.tensorrt import engine_name

    run, _ = make_run(tmp_path)
    with pytest.raises(TensorRTUnavailable, match=r"TensorRT is not installed.*ONNX files are ready") as err:
        export_checkpoint(run, ExportOptions(exporter="torchscript", trt=True), log=lambda _: None)
    assert "\n" not in str(err.value) and str(run / "export" / "encoder.onnx") in str(err.value)
    assert (run / "export" / "encoder.onnx").is_file() and (run / "export" / "decoder.onnx").is_file()
    assert engine_name("encoder", "int8") == "encoder.int8.engine"
    assert not list((run / "export").glob("*.engine"))


@pytest.mark.skipif(HAS_CUDA, reason="a CUDA GPU is present")
def test_without_gpu_the_line_says_a_cuda_gpu_is_needed(tmp_path):
    ready = "; the ONNX files are ready to use with onnxruntime: runs/x/export/encoder.onnx"
    with pytest.raises(TensorRTUnavailable, match=r"TensorRT needs a CUDA GPU; none is usable here; the ONNX files"):
        cuda_gpu(ready)
    if HAS_TENSORRT:  # tensorrt installed on a machine without a GPU: the whole command, end to end
        run, _ = make_run(tmp_path)
        result = _export_cli([str(run), "--trt", "--int8", "--calib", "32", "--exporter", "torchscript"], tmp_path)
        assert result.returncode == 2 and "needs a CUDA GPU" in result.stderr
        assert "encoder.int8.onnx" in result.stderr and result.stderr.strip().count("\n") == 0


def _sidecar(tmp_path, **changes):
    from alitool.config import load_config
    from alitool.trained_networks import meta_from_config

    info = {"graph": "encoder", "precision": "fp16", "tensorrt_version": "10.13.3.9", "gpu_name": "NVIDIA L4",
            "compute_capability": "8.9", "profile": {"input": "images", "min": [1, 1, 8, 8], "opt": [64, 1, 8, 8],
                                                     "max": [64, 1, 8, 8]},
            "meta": meta_from_config(load_config("digits", TINY_CONV)).to_json(), **changes}
    engine = tmp_path / f"{info['graph']}.fp16.engine"
    engine.write_bytes(b"serialized engine bytes")
    (tmp_path / f"{engine.name}.json").write_text(json.dumps(info))
    return engine


def test_engine_for_another_gpu_or_version_is_refused(tmp_path):
    engine = _sidecar(tmp_path)
    info = read_sidecar(engine)
    here = {"gpu_name": "NVIDIA L4", "compute_capability": "8.9"}
    check_engine_compatible(info, engine, "10.13.3.9", here)  # same everything: accepted
    with pytest.raises(UserError, match=r"built with TensorRT 10.13.3.9, this is TensorRT 11.4.0.106"):
        check_engine_compatible(info, engine, "11.4.0.106", here)
    with pytest.raises(UserError, match=r"compute capability '8.9' \(NVIDIA L4\), this machine has '9.0'"):
        check_engine_compatible(info, engine, "10.13.3.9", {"gpu_name": "NVIDIA H100", "compute_capability": "9.0"})
    with pytest.raises(UserError, match="GPU 'NVIDIA L4'.*'NVIDIA L40S'"):
        check_engine_compatible(info, engine, "10.13.3.9", {"gpu_name": "NVIDIA L40S", "compute_capability": "8.9"})


def test_engine_without_sidecar_or_tensorrt_gets_one_clear_line(tmp_path):
    bare = tmp_path / "bare" / "encoder.engine"
    bare.parent.mkdir()
    bare.write_bytes(b"x")
    with pytest.raises(UserError, match="no encoder.engine.json next to it"):
        load_backend(bare)
    (tmp_path / "bad").mkdir()
    broken = _sidecar(tmp_path / "bad")
    (tmp_path / "bad" / f"{broken.name}.json").write_text("{not json")
    with pytest.raises(UserError, match="unreadable engine sidecar"):
        load_backend(broken)
    engine = _sidecar(tmp_path)
    assert resolve_engines(tmp_path) == {"encoder": engine}
    if not HAS_TENSORRT:
        with pytest.raises(TensorRTUnavailable, match=r"pip install 'alitool\[trt\]'"):
            load_backend(engine)


# ---------------------------------------------------------------------------------------------------------
# On a GPU machine with tensorrt: real engines, built and run.


@pytest.fixture(scope="module")
def gpu_export(tmp_path_factory):
    if not (HAS_CUDA and HAS_TENSORRT):
        pytest.skip("needs a CUDA GPU and tensorrt")
    root = tmp_path_factory.mktemp("trt")
    run, model = make_run(root)
    for extra in ({}, {"fp16": True}, {"int8": True, "calib": "256"}):  # fp32, fp16 and int8 engines
        export_checkpoint(run, ExportOptions(exporter="torchscript", trt=True, batch=32, **extra), log=lambda _: None)
    return run, model


@gpu
@needs_gpu
def test_fp32_engine_matches_pytorch_at_any_batch(gpu_export):
    run, _ = gpu_export
    export = run / "export"
    trt_backend = load_backend(export / "encoder.engine")
    reference = load_backend(run / "checkpoint.pt", device="cpu")
    assert trt_backend.name == "tensorrt" and trt_backend.meta == reference.meta
    assert trt_backend.meta.has_decoder  # decoder.engine found next to it
    for batch in (1, 5, 70):  # 70 > the profile's max (32): run in chunks
        x = np.random.default_rng(batch).uniform(0, 1, (batch, 1, 8, 8)).astype(np.float32)
        for kind in ("mean", "paper"):
            np.testing.assert_allclose(trt_backend.encode(x, kind), reference.encode(x, kind), rtol=1e-3, atol=1e-3)
        z = np.random.default_rng(batch + 1).standard_normal((batch, 4)).astype(np.float32)
        np.testing.assert_allclose(trt_backend.decode(z), reference.decode(z), rtol=1e-3, atol=1e-3)


@gpu
@needs_gpu
def test_fp16_and_int8_engines_are_close_to_fp32(gpu_export):
    run, _ = gpu_export
    export = run / "export"
    x = np.random.default_rng(0).uniform(0, 1, (64, 1, 8, 8)).astype(np.float32)
    reference = load_backend(run / "checkpoint.pt", device="cpu").encode(x)
    for name, bound in (("encoder.fp16.engine", 0.999), ("encoder.int8.engine", 0.98)):
        backend = load_backend(export / name)
        assert z_mean_fidelity(reference, backend.encode(x)).cosine_mean > bound, name
    assert load_backend(export / "decoder.fp16.engine").decode(reference).shape == (64, 1, 8, 8)


@gpu
@needs_gpu
def test_sidecar_records_the_build_and_a_mismatch_is_refused(gpu_export):
    import tensorrt as trt

    run, _ = gpu_export
    engine = run / "export" / "encoder.int8.engine"
    info = json.loads((engine.parent / "encoder.int8.engine.json").read_text())
    here = cuda_gpu()
    assert info["tensorrt_version"] == trt.__version__ and info["gpu_name"] == here["gpu_name"]
    assert info["compute_capability"] == here["compute_capability"] and info["precision"] == "int8"
    assert info["profile"]["min"][0] == 1 and info["profile"]["opt"][0] == info["profile"]["max"][0] == 32
    info["tensorrt_version"] = "9.0.0"
    (engine.parent / "encoder.int8.engine.json").write_text(json.dumps(info))
    with pytest.raises(UserError, match="built with TensorRT 9.0.0"):
        load_backend(engine)
