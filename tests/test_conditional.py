"""Conditional ALI (paper section 4.4, Eq. 7): y's injection into conv and MLP tables, training with labels and
attributes, the RUN commands with --class / --attrs / --grid / --dataset, and ONNX export with y. Real tiny
models, real digits data, real onnxruntime."""

from __future__ import annotations

import cv2
import numpy as np
import onnx
import pytest
import torch
import yaml
from helpers import ATTRS, TINY_DIGITS, invoke_cli, save_tiny_model, write_celeba

from alitool.backends import load_backend
from alitool.checkpoint import load_checkpoint
from alitool.conditional import Condition, condition_of
from alitool.config import load_config, to_dict, with_train
from alitool.data import ArrayDataset, load_dataset
from alitool.errors import UserError
from alitool.models import ALI, feature_dim
from alitool.trainers.loop import Trainer

COND = ["model.conditional=true", "model.y_embed_dim=8"]
CLASSES = ["model.y_kind=class", "model.y_names=[a,b,c]"]
TINY_MLP = [  # the 2-D experiment's table shapes (section 4.5), with the encoder's noise input
    "model.encoder_noise_dim=2",
    "model.encoder=[[linear,0,0,16,true,0.0,relu],[linear,0,0,16,true,0.0,relu],[linear,0,0,2,false,0.0,linear]]",
    "model.decoder=[[linear,0,0,16,true,0.0,relu],[linear,0,0,2,false,0.0,linear]]",
]
CELL, PAD = 32, 2  # viz.make_grid: 8x8 images enlarged to 32x32 cells, 2-pixel borders


run = invoke_cli


def one_line_error(result) -> str:
    """The one ``error:`` line of a refused command (exit status 2, no traceback)."""
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    lines = [line for line in result.output.strip().splitlines() if line.startswith("error:")]
    assert len(lines) == 1, result.output
    return lines[0]


# -- the networks --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("table", ["conv", "mlp"])
def test_conditional_shapes_and_y_changes_every_network(table):
    if table == "conv":
        cfg = load_config("digits", TINY_DIGITS + COND + CLASSES)
        x = torch.rand(5, 1, 8, 8)
    else:
        cfg = load_config("mixture25", TINY_MLP + COND + CLASSES)
        x = torch.randn(5, 2)
    torch.manual_seed(0)
    ali = ALI(cfg).eval()
    for p in ali.parameters():  # away from the tiny N(0, 0.01) init, so that y's effect is visible
        torch.nn.init.normal_(p, 0.0, 0.3)
    latent = cfg.model.latent_dim
    z = torch.randn(5, latent)
    y1, y2 = torch.eye(3)[[0, 1, 2, 0, 1]], torch.eye(3)[[2, 2, 2, 2, 2]]
    with torch.no_grad():
        mu, log_sigma = ali.encoder(x, y1)
        assert mu.shape == (5, latent) and (log_sigma is None or log_sigma.shape == (5, latent))
        assert ali.decoder(z, y1).shape == x.shape
        assert ali.discriminator(x, z, y1).shape == (5,)
        assert ali.encoder.features(x, y1).shape == (5, feature_dim(cfg))
        assert not torch.allclose(ali.encoder(x, y1)[0], ali.encoder(x, y2)[0])
        assert not torch.allclose(ali.decoder(z, y1), ali.decoder(z, y2))
        assert not torch.allclose(ali.discriminator(x, z, y1), ali.discriminator(x, z, y2))
    with pytest.raises(UserError, match="needs y"):
        ali.decoder(z)


def test_conditioning_adds_only_the_embeddings_and_the_widened_rows():
    """An unconditional model's parameters are untouched (old checkpoints load); conditioning adds a y -> 8
    embedding per network and widens exactly the rows the embedding joins: encoder's last, decoder's first,
    D(x, z)'s first."""
    plain = {k: v.shape for k, v in ALI(load_config("digits", TINY_DIGITS)).state_dict().items()}
    cond = {k: v.shape for k, v in ALI(load_config("digits", TINY_DIGITS + COND + CLASSES)).state_dict().items()}
    added = {k for k in cond if k not in plain}
    assert added == {f"{net}.embed.{p}" for net in ("encoder", "decoder", "discriminator") for p in ("weight", "bias")}
    assert all(cond[f"{net}.embed.weight"] == (8, 3) for net in ("encoder", "decoder", "discriminator"))
    widened = {k for k in plain if cond[k] != plain[k]}
    assert widened == {"encoder.stack.rows.3.conv.weight", "decoder.stack.rows.0.deconv.weight",
                       "discriminator.xz_stack.rows.0.conv.weight"}


FIVE = ("Male", "Smiling", "Eyeglasses", "Young", "Bangs")


def test_condition_from_labels_and_attributes():
    digits = load_dataset(load_config("digits"), "test")
    condition = Condition("class", digits.class_names)
    y = condition.rows(digits, slice(0, 20))
    assert y.shape == (20, 10) and np.array_equal(y.argmax(1), digits.y[:20]) and np.all(y.sum(1) == 1)
    faces = ArrayDataset("celeba", "train", np.zeros((3, 1, 8, 8), np.uint8), None,
                         np.array([[1, 0, 1, 0, 0], [0, 1, 1, 0, 1], [0, 0, 0, 0, 0]], np.uint8), FIVE)
    attrs = Condition("attributes", FIVE)
    assert np.array_equal(attrs.rows(faces, [1, 2]), faces.attrs[[1, 2]].astype(np.float32))
    assert np.array_equal(attrs.parse_attrs("male, eyeglasses"), [1, 0, 1, 0, 0])
    with pytest.raises(UserError, match="valid: Male, Smiling, Eyeglasses, Young, Bangs"):
        attrs.parse_attrs("Male,Beard")
    titles, columns = attrs.grid_columns("Smiling,Bangs", base=attrs.parse_attrs("Male"))
    assert titles == ["(base)", "Smiling", "Bangs"]
    assert np.array_equal(columns, [[1, 0, 0, 0, 0], [1, 1, 0, 0, 0], [1, 0, 0, 0, 1]])


# -- training -----------------------------------------------------------------------------------------------


def _train(run_dir, overrides, steps=3):
    cfg = with_train(load_config("digits", TINY_DIGITS + overrides), max_steps=steps, batch_size=8, epochs=100)
    train_data = load_dataset(cfg, "train")
    train_data.x, train_data.y = train_data.x[:48], train_data.y[:48]
    trainer = Trainer(cfg, run_dir, train_data=train_data, log=lambda msg: None)
    trainer.start_fresh()
    trainer.fit()
    return trainer


@pytest.fixture(scope="module")
def class_run(tmp_path_factory):
    return _train(tmp_path_factory.mktemp("cond") / "digits-cond", COND).run_dir


@pytest.fixture(scope="module")
def attr_run(tmp_path_factory):
    """`alitool train <celeba-shaped tiny config> --conditional` on CelebA's official file layout (6 images)."""
    root = tmp_path_factory.mktemp("celeba")
    write_celeba(root / "celeba")
    config = root / "tiny_celeba.yaml"
    cfg = load_config("digits", TINY_DIGITS + ["data.name=celeba", "model.y_embed_dim=8", "train.sample_grid=4"])
    config.write_text(yaml.safe_dump(to_dict(cfg)))
    result = run("train", config, "--conditional", "--data-dir", root, "--max-steps", 2, "--batch-size", 2,
                 "--threads", 1, "--out", root / "faces")
    assert result.exit_code == 0, result.output
    return root / "faces"


def test_checkpoint_records_what_y_means(class_run, attr_run):
    cfg = load_checkpoint(class_run / "checkpoint.pt")["config"]
    assert (cfg.model.y_kind, cfg.model.y_names) == ("class", tuple("0123456789"))
    assert condition_of(load_checkpoint(attr_run / "checkpoint.pt")["config"].model) == \
        Condition("attributes", tuple(ATTRS))
    assert (class_run / "samples" / "epoch_001.png").is_file()


def test_train_cli_refuses_datasets_without_labels(tmp_path):
    for dataset in ("folder", "mixture25"):
        line = one_line_error(run("train", dataset, "--conditional", "--max-steps", 1, "--out", tmp_path / dataset))
        assert f"the {dataset} dataset has no class labels or attributes" in line
        assert not (tmp_path / dataset).exists()


# -- using a conditional model ----------------------------------------------------------------------------


def test_sample_class_and_attrs(class_run, attr_run, tmp_path):
    result = run("sample", "--model", class_run, "--class", 3, "--n", 4, "--out", tmp_path / "threes.png")
    assert result.exit_code == 0, result.output
    backend = load_backend(class_run)
    z = np.random.default_rng(0).standard_normal((4, 4)).astype(np.float32)
    threes = backend.decode(z, y=np.eye(10, dtype=np.float32)[[3] * 4])
    fives = backend.decode(z, y=np.eye(10, dtype=np.float32)[[5] * 4])
    assert np.abs(threes - fives).max() > 0  # y reaches the decoder (3 steps from a N(0, 0.01) init: a little)
    picture = cv2.imread(str(tmp_path / "threes.png"), cv2.IMREAD_GRAYSCALE)
    first = (np.clip(threes[0, 0], 0, 1) * 255 + 0.5).astype(np.uint8).repeat(4, 0).repeat(4, 1)
    assert np.array_equal(picture[PAD : PAD + CELL, PAD : PAD + CELL], first)

    result = run("sample", "--model", attr_run, "--attrs", "Male,Smiling,Eyeglasses", "--out", tmp_path / "a.png")
    assert result.exit_code == 0 and (tmp_path / "a.png").is_file(), result.output
    line = one_line_error(run("sample", "--model", attr_run, "--attrs", "Male,Beard", "--out", tmp_path / "b.png"))
    assert "unknown attribute 'Beard'" in line and f"valid: {', '.join(ATTRS)}" in line
    assert "conditioned on attributes" in one_line_error(run("sample", "--model", attr_run, "--class", 1,
                                                             "--out", tmp_path / "c.png"))


def test_y_options_on_an_unconditional_model_are_one_line(tmp_path):
    plain = save_tiny_model(tmp_path / "plain.pt")
    for option in (["--class", "3"], ["--attrs", "Male"], ["--grid", "all"]):
        line = one_line_error(run("sample", "--model", plain, *option, "--out", tmp_path / "s.png"))
        assert "is not conditional" in line


def test_grid_has_one_row_per_z_and_one_column_per_setting(class_run, attr_run, tmp_path):
    assert run("sample", "--model", class_run, "--rows", 3, "--out", tmp_path / "all.png").exit_code == 0
    grid = cv2.imread(str(tmp_path / "all.png"))
    assert grid.shape[:2] == (3 * (CELL + PAD) + PAD, 10 * (CELL + PAD) + PAD)  # default: every class
    result = run("sample", "--model", attr_run, "--grid", "Smiling;Eyeglasses;Smiling,Bangs", "--attrs", "Male",
                 "--rows", 2, "--out", tmp_path / "attrs.png")
    assert result.exit_code == 0 and "Smiling | Eyeglasses | Smiling,Bangs" in result.output, result.output
    grid = cv2.imread(str(tmp_path / "attrs.png"), cv2.IMREAD_GRAYSCALE)
    assert grid.shape == (2 * (CELL + PAD) + PAD, 3 * (CELL + PAD) + PAD)
    # Cell (r, c) is G_x(z_r, y_c): z_r from the seed, y_c = Male + the column's attributes.
    z = np.random.default_rng(0).standard_normal((2, 4)).astype(np.float32)
    columns = np.zeros((3, 40), np.float32)
    for column, names in enumerate((["Male", "Smiling"], ["Male", "Eyeglasses"], ["Male", "Smiling", "Bangs"])):
        columns[column, [ATTRS.index(name) for name in names]] = 1
    backend = load_backend(attr_run)
    expected = backend.decode(np.repeat(z, 3, axis=0), y=np.tile(columns, (2, 1))).reshape(2, 3, 8, 8)
    assert not np.array_equal(expected[0, 0], expected[1, 0])  # another z in each row
    assert not np.array_equal(expected[0, 0], expected[0, 1])  # another y in each column
    for r in range(2):
        for c in range(3):
            top, left = PAD + r * (CELL + PAD), PAD + c * (CELL + PAD)
            tile = (np.clip(expected[r, c], 0, 1) * 255 + 0.5).astype(np.uint8).repeat(4, 0).repeat(4, 1)
            assert np.array_equal(grid[top : top + CELL, left : left + CELL], tile), (r, c)


def test_encode_and_reconstruct_read_labels_from_the_dataset(class_run, tmp_path):
    result = run("encode", "--dataset", "test", "--model", class_run, "--out", tmp_path / "f.npy")
    assert result.exit_code == 0, result.output
    test = load_dataset(load_config("digits"), "test")
    expected = load_backend(class_run).encode(test.float_batch(slice(None)).numpy(),
                                              y=np.eye(10, dtype=np.float32)[test.y])
    np.testing.assert_allclose(np.load(tmp_path / "f.npy"), expected, rtol=1e-5, atol=1e-6)
    assert (tmp_path / "f.index.csv").read_text().splitlines()[1] == "0,digits:test:0,,"
    result = run("reconstruct", "--dataset", "test", "--n", 4, "--model", class_run, "--out", tmp_path / "r.png")
    assert result.exit_code == 0, result.output
    assert cv2.imread(str(tmp_path / "r.png")).shape[:2] == (CELL + 2 * PAD, 8 * (CELL + PAD) + PAD)
    assert "needs --class or --dataset" in one_line_error(
        run("reconstruct", tmp_path / "r.png", "--model", class_run, "--out", tmp_path / "r2.png"))


# -- export ---------------------------------------------------------------------------------------------------


def test_export_with_y_matches_pytorch_and_int8_leaves_y_in_float(class_run, tmp_path):
    result = run("export", class_run, "--out", tmp_path / "export", "--exporter", "torchscript", "--int8",
                 "--calib", 32)
    assert result.exit_code == 0, result.output
    enc = onnx.load(str(tmp_path / "export" / "encoder.onnx"))
    dec = onnx.load(str(tmp_path / "export" / "decoder.onnx"))
    assert [i.name for i in enc.graph.input] == ["images", "y"] and [i.name for i in dec.graph.input] == ["z", "y"]
    y_shape = [d.dim_param or d.dim_value for d in enc.graph.input[1].type.tensor_type.shape.dim]
    assert y_shape[1] == 10
    onnx_backend, torch_backend = load_backend(tmp_path / "export"), load_backend(class_run)
    assert (onnx_backend.meta.y_dim, onnx_backend.meta.y_kind) == (10, "class")
    assert onnx_backend.meta.y_names == tuple("0123456789")
    rng = np.random.default_rng(1)
    for batch in (1, 7):  # batches other than the export example's
        x = rng.random((batch, 1, 8, 8), dtype=np.float32)
        y = np.eye(10, dtype=np.float32)[rng.integers(0, 10, batch)]
        z = rng.standard_normal((batch, 4)).astype(np.float32)
        for kind in ("mean", "paper"):
            np.testing.assert_allclose(onnx_backend.encode(x, kind=kind, y=y), torch_backend.encode(x, kind=kind, y=y),
                                       rtol=1e-3, atol=1e-4)
        np.testing.assert_allclose(onnx_backend.decode(z, y=y), torch_backend.decode(z, y=y), rtol=1e-3, atol=1e-4)
    with pytest.raises(UserError, match="needs|give y"):
        onnx_backend.decode(z)
    int8 = onnx.load(str(tmp_path / "export" / "encoder.int8.onnx"))
    readers = [node for node in int8.graph.node if "y" in node.input]
    assert readers and all(node.op_type not in ("QuantizeLinear", "DynamicQuantizeLinear") for node in readers)
    assert "INT8 fidelity" in result.output
