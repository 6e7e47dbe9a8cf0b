"""The Python API (alitool/api.py, docs/python.md) on a tiny real model exported in-process: the docs example runs
as written; paths, a folder, uint8 arrays and PIL images give the rows of `alitool encode` on the same files; the
colour order of arrays is RGB; mistakes are one clear line."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from helpers import digit_images, invoke_cli, read_index, rgb_image, save_tiny_model

import alitool
from alitool.errors import UserError

pytest.importorskip("onnxruntime")
ROOT = Path(__file__).resolve().parent.parent
N = 12


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """The README quickstart's layout: runs/digits (a tiny checkpoint and its ONNX export) and digit_pngs/0.png ..."""
    root = tmp_path_factory.mktemp("api")
    save_tiny_model(root / "runs" / "digits" / "checkpoint.pt")
    result = invoke_cli("export", root / "runs" / "digits", "--out", root / "runs" / "digits" / "export",
                        "--exporter", "torchscript")
    assert result.exit_code == 0, result.output
    (root / "digit_pngs").mkdir()
    for i, image in enumerate(digit_images(N)):
        assert cv2.imwrite(str(root / "digit_pngs" / f"{i}.png"), image)
    return root


def cli_rows(workdir: Path, *args) -> tuple[np.ndarray, list[str]]:
    out = workdir / "cli.npy"
    result = invoke_cli("encode", *args, "--out", out)
    assert result.exit_code == 0, result.output
    return np.load(out), [row["source"] for row in read_index(workdir / "cli.index.csv")]


def docs_example() -> str:
    text = (ROOT / "docs" / "python.md").read_text(encoding="utf-8")
    section = text.split("## Example", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_the_docs_example_runs(workdir, monkeypatch):
    monkeypatch.chdir(workdir)
    scope: dict = {}
    exec(compile(docs_example(), "docs/python.md", "exec"), scope)
    model, z = scope["model"], scope["z"]
    assert z.shape == (N, model.meta.latent_dim) and z.dtype == np.float32
    assert scope["images"].shape == (8, 1, 8, 8) and 0 <= scope["images"].min() and scope["images"].max() <= 1
    assert scope["recon"].shape == (N, 8, 8, 1) and scope["recon"].dtype == np.uint8
    assert scope["line"].shape == (8, 1, 8, 8) and scope["samples"].shape == (16, 1, 8, 8)
    assert all((workdir / f"sample_{i}.png").is_file() for i in range(4))


@pytest.mark.parametrize("model_path", ["runs/digits/export", "runs/digits/checkpoint.pt"])
def test_every_kind_of_input_gives_the_rows_of_alitool_encode(workdir, monkeypatch, model_path):
    from PIL import Image

    monkeypatch.chdir(workdir)
    expected, sources = cli_rows(workdir, "digit_pngs", "--model", model_path)
    model = alitool.load(model_path)
    assert model.runtime == ("onnxruntime" if model_path.endswith("export") else "torch")
    pixels = [cv2.imread(s, cv2.IMREAD_UNCHANGED) for s in sources]  # grayscale: no channel order to mind
    inputs = {
        "folder": "digit_pngs",
        "folder as Path": Path("digit_pngs"),
        "list of paths": sources,
        "list of Paths": [Path(s) for s in sources],
        "uint8 batch N x H x W x 1": np.stack(pixels)[..., None],
        "list of uint8 H x W": pixels,
        "uint8 as RGB": [np.repeat(p[..., None], 3, axis=2) for p in pixels],
        "PIL images": [Image.open(s) for s in sources],
        "floats in [0, 1]": np.stack(pixels)[:, None].astype(np.float32) / 255,
    }
    for label, x in inputs.items():
        np.testing.assert_allclose(model.encode(x), expected, atol=1e-6, rtol=0, err_msg=label)
    # one image without a batch axis: one row
    for one in (pixels[3], pixels[3][..., None], Image.open(sources[3]), sources[3], pixels[3][None] / 255.0):
        np.testing.assert_allclose(model.encode(one), expected[3:4], atol=1e-6, rtol=0)
    paper, _ = cli_rows(workdir, "digit_pngs", "--model", model_path, "--features", "paper")
    np.testing.assert_allclose(model.encode(pixels, kind="paper"), paper, atol=1e-6, rtol=0)


def test_colour_arrays_are_rgb_and_match_the_files(tmp_path, monkeypatch):
    """A 3-channel model on non-square colour pictures: crop, resize and channel order as for the PNG files."""
    from PIL import Image

    monkeypatch.chdir(tmp_path)
    checkpoint = save_tiny_model(tmp_path / "rgb" / "checkpoint.pt", channels=3)
    (tmp_path / "pics").mkdir()
    bgr = [rgb_image(40, 48, seed=i) for i in range(5)]  # OpenCV order, as cv2.imwrite takes it
    for i, image in enumerate(bgr):
        cv2.imwrite(str(tmp_path / "pics" / f"{i}.png"), image)
    expected, _ = cli_rows(tmp_path, "pics", "--model", checkpoint)
    model = alitool.load(checkpoint)
    rgb = np.stack([b[:, :, ::-1] for b in bgr])
    rgba = np.concatenate([rgb, np.full((*rgb.shape[:3], 1), 7, np.uint8)], axis=3)
    for label, x in {"uint8 RGB batch": rgb, "uint8 RGBA": rgba, "list": list(rgb),
                     "PIL": [Image.fromarray(p) for p in rgb], "files": "pics"}.items():
        np.testing.assert_allclose(model.encode(x), expected, atol=1e-6, rtol=0, err_msg=label)
    assert not np.allclose(model.encode(np.stack(bgr)), expected, atol=1e-3)  # BGR by mistake: other rows
    # uint8 output: [N, H, W, 3] RGB, the float images rounded
    images = model.reconstruct(rgb[:2])
    pixels = model.reconstruct(rgb[:2], uint8=True)
    assert images.shape == (2, 3, 8, 8) and pixels.shape == (2, 8, 8, 3) and pixels.dtype == np.uint8
    np.testing.assert_array_equal(pixels, np.rint(images.transpose(0, 2, 3, 1) * 255).astype(np.uint8))
    assert [p.mode for p in model.to_pil(images)] == ["RGB", "RGB"]


def test_mistakes_are_one_clear_line(workdir, monkeypatch):
    monkeypatch.chdir(workdir)
    model = alitool.load("runs/digits/export")
    digits = digit_images(4)
    cases = [
        (digits[:, None].astype(np.float32), r"float input outside \[0, 1\] .*: pass uint8 pixels or divide by 255"),
        (digits.astype(np.int64), "unsupported pixel type int64: .*astype"),
        (digits[..., None].astype(np.float32) / 255, r"float input of shape \(4, 8, 8, 1\): .*\[N, 1, 8, 8\]"),
        (np.zeros((8, 8, 5), np.uint8), "one image is H x W x C with C = 1, 3 or 4"),
        (np.zeros((2, 8, 8, 5), np.uint8), "5 channels"),
        (np.full((1, 1, 8, 8), np.nan, np.float32), "NaN"),
        ([], "nothing to run the model on"),
        (["digit_pngs/0.png", digits[0]], "not both"),
        ("digit_pngs/missing.png", "missing.png: "),
        (object(), "cannot read object as images"),
    ]
    for x, message in cases:
        with pytest.raises(UserError, match=message) as err:
            model.encode(x)
        assert "\n" not in str(err.value)
    with pytest.raises(UserError, match=r"z of shape \(2, 3\)"):
        model.decode(np.zeros((2, 3), np.float32))
    with pytest.raises(UserError, match="must be one image, not 12"):
        model.interpolate("digit_pngs", "digit_pngs/0.png")
    with pytest.raises(UserError, match="unknown feature kind"):
        model.encode(digits, kind="median")


def test_decode_sample_and_the_default_model(workdir, monkeypatch):
    monkeypatch.chdir(workdir)
    model = alitool.load()  # the CLI's default: the newest export
    assert model.path == Path("runs", "digits", "export") and model.runtime == "onnxruntime"
    assert alitool.load(backend="torch").path == Path("runs", "digits")
    one = model.decode(np.zeros(model.meta.latent_dim, np.float32))
    assert one.shape == (1, 1, 8, 8) and one.dtype == np.float32
    a, b, c = model.sample(5, seed=3), model.sample(5, seed=3), model.sample(5, seed=4)
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c) and 0 <= a.min() and a.max() <= 1
    z = np.random.default_rng(3).standard_normal((5, model.meta.latent_dim)).astype(np.float32)
    np.testing.assert_array_equal(model.decode(z), a)  # the draws of `alitool sample --seed 3`
    line = model.interpolate("digit_pngs/0.png", "digit_pngs/1.png", steps=3)
    ends = model.decode(model.encode(["digit_pngs/0.png", "digit_pngs/1.png"]))
    np.testing.assert_allclose(line[[0, 2]], ends, atol=1e-6)
    assert model.to_uint8(one).shape == (1, 8, 8, 1)


@pytest.mark.slow
def test_import_is_instant_and_onnx_models_never_import_torch(workdir):
    code = ("import sys, alitool; assert 'numpy' not in sys.modules and 'torch' not in sys.modules; "
            "m = alitool.load('runs/digits/export'); m.encode('digit_pngs'); m.sample(2); "
            "assert 'torch' not in sys.modules, 'torch imported'; print('ok')")
    result = subprocess.run([sys.executable, "-c", code], cwd=workdir, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr


def test_a_conditional_model_takes_y_per_row_or_one_for_all(tmp_path):
    from helpers import TINY_CONV

    from alitool.checkpoint import save_checkpoint
    from alitool.config import load_config
    from alitool.models import ALI

    cfg = load_config("digits", [*TINY_CONV, "model.conditional=true", "model.y_embed_dim=8", "model.y_kind=class",
                                 "model.y_names=[c0,c1,c2,c3,c4,c5,c6,c7,c8,c9]"])
    ali = ALI(cfg).eval()
    checkpoint = tmp_path / "cond" / "checkpoint.pt"
    save_checkpoint(checkpoint, cfg=cfg, models={"encoder": ali.encoder, "decoder": ali.decoder})
    model = alitool.load(checkpoint, batch_size=4)
    assert model.meta.y_dim == 10 and model.meta.y_kind == "class"
    pixels = digit_images(6)[..., None]  # N x H x W x 1
    y = np.eye(10, dtype=np.float32)[[0, 1, 2, 3, 4, 5]]
    x = pixels.transpose(0, 3, 1, 2).astype(np.float32) / 255
    np.testing.assert_allclose(model.encode(pixels, y=y), model.backend.encode(x, y=y), atol=1e-6)
    threes = np.eye(10, dtype=np.float32)[3]
    np.testing.assert_allclose(model.encode(pixels, y=threes), model.encode(pixels, y=np.tile(threes, (6, 1))))
    assert model.sample(3, seed=0, y=threes).shape == (3, 1, 8, 8)
    with pytest.raises(UserError, match="is conditional on 10 classes"):
        model.encode(pixels)
    with pytest.raises(UserError, match="y has 5 rows"):
        model.encode(pixels, y=y[:5])
