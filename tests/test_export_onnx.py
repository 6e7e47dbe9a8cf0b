"""Export stage: ONNX parity at a batch different from the export example, metadata round trip, the backend
interface over checkpoint and ONNX files, and the CLI. Real tiny models and real onnxruntime throughout."""

from __future__ import annotations

import json
import warnings

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from helpers import TINY_CONV, alitool_subprocess, make_run, trained_like

from alitool.backends import load_backend
from alitool.config import load_config
from alitool.contract.meta import ModelMeta
from alitool.errors import UserError
from alitool.export.onnx import EXPORT_BATCH, export_networks, read_meta
from alitool.models import data_shape, feature_dim
from alitool.trained_networks import meta_from_config

# RGB 16x16 with strided convs, encoder dropout and a maxout row (reshape with a dynamic batch), deterministic
# encoder (BiGAN-style: z_mean only).
TINY_RGB_MAXOUT = [
    "data.name=folder", "data.image_size=16", "data.channels=3", "model.latent_dim=6",
    "model.encoder_output=deterministic",
    "model.encoder=[[conv,4,2,8,true,0.0,lrelu],[conv,3,1,16,true,0.2,maxout],[conv,5,1,16,true,0.0,lrelu],"
    "[conv,1,1,6,false,0.0,linear]]",
    "model.decoder=[[deconv,5,1,16,true,0.0,lrelu],[deconv,3,1,8,true,0.0,relu],[deconv,4,2,8,true,0.0,lrelu],"
    "[conv,1,1,3,false,0.0,sigmoid]]",
    "model.disc_x=[[conv,4,2,8,false,0.2,lrelu],[conv,3,1,8,true,0.2,lrelu],[conv,5,1,16,true,0.2,lrelu]]",
    "model.disc_z=[[conv,1,1,16,false,0.2,lrelu]]",
    "model.disc_xz=[[conv,1,1,1,false,0.2,linear]]",
]
# The 2-D toy experiment's shape (section 4.5): vectors, linear tables, no sigmoid.
TINY_MLP = [
    "data.name=mixture", "data.image_size=0", "data.channels=2", "model.latent_dim=2",
    "model.encoder=[[linear,0,0,32,true,0.0,relu],[linear,0,0,32,true,0.0,relu],[linear,0,0,4,false,0.0,linear]]",
    "model.decoder=[[linear,0,0,32,true,0.0,relu],[linear,0,0,32,true,0.0,relu],[linear,0,0,2,false,0.0,linear]]",
    "model.disc_x=[]", "model.disc_z=[]",
    "model.disc_xz=[[linear,0,0,16,false,0.0,lrelu],[linear,0,0,1,false,0.0,linear]]",
]
CONFIGS = {"conv": TINY_CONV, "rgb_maxout": TINY_RGB_MAXOUT, "mlp": TINY_MLP}


@pytest.mark.parametrize("name", list(CONFIGS))
def test_parity_at_other_batch_sizes(tmp_path, name):
    cfg = load_config("digits", CONFIGS[name])
    model = trained_like(cfg)
    pair = export_networks(model.encoder, model.decoder, meta_from_config(cfg), tmp_path, exporter="torchscript",
                           log=lambda _: None)
    assert pair.encoder_parity.ok and pair.decoder_parity.ok
    enc = ort.InferenceSession(str(pair.encoder_path), providers=["CPUExecutionProvider"])
    dec = ort.InferenceSession(str(pair.decoder_path), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(7)
    for batch in (1, 11):  # neither is the export example's batch
        assert batch != EXPORT_BATCH
        x = rng.uniform(0, 1, (batch, *data_shape(cfg))).astype(np.float32)
        z = rng.standard_normal((batch, cfg.model.latent_dim)).astype(np.float32)
        got = dict(zip([o.name for o in enc.get_outputs()], enc.run(None, {"images": x}), strict=True))
        with torch.no_grad():
            mu, log_sigma = model.encoder(torch.from_numpy(x))
            np.testing.assert_allclose(got["z_mean"], mu.numpy(), rtol=1e-3, atol=1e-4)
            if log_sigma is None:
                assert "z_log_sigma" not in got
            else:
                np.testing.assert_allclose(got["z_log_sigma"], log_sigma.numpy(), rtol=1e-3, atol=1e-4)
            np.testing.assert_allclose(got["features"], model.encoder.features(torch.from_numpy(x)).numpy(),
                                       rtol=1e-3, atol=1e-4)
            assert got["features"].shape == (batch, feature_dim(cfg))
            np.testing.assert_allclose(dec.run(None, {"z": z})[0], model.decoder(torch.from_numpy(z)).numpy(),
                                       rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_batch_norm_is_folded_out_of_the_graphs_and_the_networks_keep_theirs(tmp_path, name):
    """conv + BN, deconv + BN and linear + BN1d rows all fold (export/fold.py); the parity check of the export
    compares the folded graphs with the networks, which must come out of the export unchanged."""
    cfg = load_config("digits", CONFIGS[name])
    model = trained_like(cfg)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    pair = export_networks(model.encoder, model.decoder, meta_from_config(cfg), tmp_path, exporter="torchscript",
                           log=lambda _: None)
    assert pair.encoder_parity.ok and pair.decoder_parity.ok
    for path in (pair.encoder_path, pair.decoder_path):
        assert "BatchNormalization" not in {node.op_type for node in onnx.load(str(path)).graph.node}
    after = model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.encoder.modules())


@pytest.mark.slow
def test_dynamo_exporter_dynamic_batch(tmp_path):
    # The default exporter; an example batch of 1 would have frozen the batch axis, so check 1 and 9 run.
    cfg = load_config("digits", TINY_RGB_MAXOUT)
    model = trained_like(cfg)
    pair = export_networks(model.encoder, model.decoder, meta_from_config(cfg), tmp_path, exporter="dynamo",
                           log=lambda _: None)
    assert pair.exporter == "dynamo" and pair.encoder_parity.ok and pair.decoder_parity.ok
    enc = ort.InferenceSession(str(pair.encoder_path), providers=["CPUExecutionProvider"])
    for batch in (1, 9):
        x = np.random.default_rng(batch).uniform(0, 1, (batch, 3, 16, 16)).astype(np.float32)
        with torch.no_grad():
            want = model.encoder(torch.from_numpy(x))[0].numpy()
        np.testing.assert_allclose(enc.run(["z_mean"], {"images": x})[0], want, rtol=1e-3, atol=1e-4)


def test_metadata_round_trip(tmp_path):
    cfg = load_config("digits", TINY_CONV)
    model = trained_like(cfg)
    meta = meta_from_config(cfg, source_sha256="ab" * 32)
    pair = export_networks(model.encoder, model.decoder, meta, tmp_path, exporter="torchscript", log=lambda _: None)
    for path, graph in ((pair.encoder_path, "encoder"), (pair.decoder_path, "decoder")):
        back, values = read_meta(path)
        assert back == meta  # the whole ModelMeta, resolved config included
        assert back.config == json.loads(meta.to_json())["config"]
        assert values["alitool.graph"] == graph and values["alitool.precision"] == "fp32"
        assert values["image_size"] == "8" and values["channels"] == "1" and values["latent_dim"] == "4"
        assert values["value_range"] == "0,1" and values["source_sha256"] == "ab" * 32
        # onnxruntime sees the same keys (what the backend reads on machines without the onnx package)
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        assert ModelMeta.from_json(session.get_modelmeta().custom_metadata_map["alitool"]) == meta
    assert read_meta(pair.encoder_path)[1]["alitool.outputs"] == "z_mean,z_log_sigma,features"


def test_failed_parity_writes_nothing(tmp_path):
    cfg = load_config("digits", TINY_CONV)
    model = trained_like(cfg)

    class Drifted(torch.nn.Module):  # a real module whose ONNX graph differs from the encoder it claims to be
        stochastic = True

        def __init__(self):
            super().__init__()
            self.stack = model.encoder.stack

        def forward(self, x):
            mu, log_sigma = model.encoder(x)
            return mu, log_sigma

        def features(self, x):
            return model.encoder.features(x) + 1.0

    with pytest.raises(UserError, match="disagrees with PyTorch"):
        export_networks(Drifted(), model.decoder, meta_from_config(cfg), tmp_path, exporter="torchscript",
                        log=lambda _: None)
    assert not list(tmp_path.glob("*.onnx"))


def test_backends_agree_checkpoint_vs_onnx(tmp_path):
    run, model = make_run(tmp_path)
    from alitool.export.pipeline import ExportOptions, export_checkpoint

    export_checkpoint(run, ExportOptions(exporter="torchscript"), log=lambda _: None)
    torch_backend = load_backend(run / "checkpoint.pt")
    onnx_backend = load_backend(run)  # the run folder with export/ -> ONNX Runtime
    assert onnx_backend.name == "onnxruntime" and torch_backend.name == "torch"
    assert onnx_backend.providers == ["CPUExecutionProvider"]
    assert onnx_backend.meta == torch_backend.meta
    x = np.random.default_rng(3).uniform(0, 1, (13, 1, 8, 8)).astype(np.float32)
    z = np.random.default_rng(4).standard_normal((6, 4)).astype(np.float32)
    for kind in ("mean", "paper"):
        np.testing.assert_allclose(onnx_backend.encode(x, kind), torch_backend.encode(x, kind), rtol=1e-3, atol=1e-4)
    np.testing.assert_allclose(onnx_backend.decode(z), torch_backend.decode(z), rtol=1e-3, atol=1e-4)
    # kind "z": sampled in NumPy around z_mean with sigma = exp(z_log_sigma)
    onnx_backend.rng = np.random.default_rng(0)
    samples = np.stack([onnx_backend.encode(x[:1], "z")[0] for _ in range(2000)])
    with torch.no_grad():
        mu, log_sigma = model.encoder(torch.from_numpy(x[:1]))
    np.testing.assert_allclose(samples.mean(0), mu[0].numpy(), atol=4 * float(log_sigma.exp().max()) / 40)
    np.testing.assert_allclose(samples.std(0), log_sigma[0].exp().numpy(), rtol=0.1)
    # wrong input shape: one clear error, not an onnxruntime traceback
    with pytest.raises(UserError, match=r"this model takes \[N, 1, 8, 8\]"):
        onnx_backend.encode(np.zeros((2, 3, 8, 8), np.float32))
    # backend and threads can be chosen explicitly
    single = load_backend(run / "export" / "encoder.onnx", backend="onnxruntime", device="cpu", threads=1)
    assert single.meta.has_decoder and "1 threads" in single.describe()


def test_onnx_backend_refuses_files_without_metadata(tmp_path):
    cfg = load_config("digits", TINY_CONV)
    model = trained_like(cfg)
    path = tmp_path / "encoder.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
        torch.onnx.export(model.encoder, (torch.rand(2, 1, 8, 8),), str(path), dynamo=False, input_names=["images"])
    with pytest.raises(UserError, match="without alitool metadata"):
        load_backend(path)
    (tmp_path / "broken.onnx").write_bytes(b"not a model")
    with pytest.raises(UserError, match="broken.onnx"):
        load_backend(tmp_path / "broken.onnx")


def test_onnx_model_checks_and_is_self_describing(tmp_path):
    cfg = load_config("digits", TINY_MLP)
    model = trained_like(cfg)
    pair = export_networks(model.encoder, model.decoder, meta_from_config(cfg), tmp_path, exporter="torchscript",
                           log=lambda _: None)
    for path in (pair.encoder_path, pair.decoder_path):
        loaded = onnx.load(str(path))
        onnx.checker.check_model(loaded)
        for value in [*loaded.graph.input, *loaded.graph.output]:
            assert value.type.tensor_type.shape.dim[0].dim_param == "batch"


@pytest.mark.slow
def test_cli_export_newest_run(tmp_path):
    run, _ = make_run(tmp_path)
    result = alitool_subprocess("export", "--exporter", "torchscript", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "parity encoder: max |ONNX Runtime - PyTorch|" in result.stdout
    assert (run / "export" / "encoder.onnx").is_file() and (run / "export" / "decoder.onnx").is_file()
    # a second export reuses the files: same checkpoint hash
    again = alitool_subprocess("export", run, cwd=tmp_path)
    assert again.returncode == 0 and "reusing them" in again.stdout


@pytest.mark.slow
def test_cli_export_without_runs_is_one_line(tmp_path):
    result = alitool_subprocess("export", cwd=tmp_path, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "train one first" in result.stderr
