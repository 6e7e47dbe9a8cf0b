"""The one preprocessing (alitool.contract.preprocess): the same image file gives the same float32 array, bit for
bit, through the three stages that read image files: the training image folders (the ``folder`` dataset, as
the trainer sees its batches), INT8 calibration (``--calib FOLDER``) and inference (what ``alitool encode``
feeds the model). The paper's models see fixed-size images in [0, 1] (Appendix A); each case here is a file
where the three copies of the preprocessing used to disagree, or could.

Also: the exported ONNX files spell the rule out (``alitool.preprocess.*`` keys) and carry the contract version.
"""

from __future__ import annotations

import io
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import pytest

from alitool.config import load_config
from alitool.contract.preprocess import CONTRACT_VERSION, Preprocess, load_pixels
from alitool.data import load_dataset
from alitool.encoding.encode import model_batches
from alitool.encoding.report import RunReport
from alitool.export.quantize import read_images
from alitool.trained_networks import meta_from_config

SIZE = 64  # the folder config's architecture is built for 64x64 (paper Appendix A, CelebA table)


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("ALITOOL_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("ALITOOL_OFFLINE", "1")


def _cfg(channels: int, crop: str = "center"):
    return load_config("folder", [f"data.image_size={SIZE}", f"data.channels={channels}", f"data.crop={crop}"])


def _textured(h: int, w: int, seed: int) -> np.ndarray:
    """BGR uint8 with detail at every scale, so that any other crop, interpolation or rounding shows."""
    yy, xx = np.mgrid[0:h, 0:w]
    rng = np.random.default_rng(seed)
    smooth = np.stack([np.sin(xx / (3 + 2 * c) + rng.random() * 6) * np.cos(yy / 5 + c) for c in range(3)], axis=2)
    return ((smooth + 1) * 100 + rng.integers(0, 55, (h, w, 3))).astype(np.uint8)


def three_stages(folder: Path, cfg) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(training, calibration, inference) float32 arrays [N, C, S, S] of the one image file in ``folder``."""
    train = load_dataset(cfg, "train", str(folder)).float_batch(slice(None)).numpy()
    calib = read_images(folder, cfg).images
    backend = SimpleNamespace(meta=meta_from_config(cfg))  # what an exported model's metadata says
    warnings: list[str] = []
    (file,) = [p for p in folder.iterdir()]
    batches = list(model_batches(backend, [str(file)], RunReport(warn=warnings.append), batch_size=1, workers=1))
    assert not warnings and len(batches) == 1
    infer = batches[0].images[: batches[0].count]
    return train, calib, infer


def assert_identical(folder: Path, cfg) -> np.ndarray:
    train, calib, infer = three_stages(folder, cfg)
    shape = (1, cfg.data.channels, SIZE, SIZE)
    assert train.shape == calib.shape == infer.shape == shape
    assert train.dtype == calib.dtype == infer.dtype == np.float32
    assert np.array_equal(train, calib), "training and INT8 calibration disagree"
    assert np.array_equal(train, infer), "training and inference disagree"
    assert 0.0 <= train.min() and train.max() <= 1.0
    return train[0]


def _one_file(tmp_path: Path, name: str) -> Path:
    folder = tmp_path / "images"
    folder.mkdir()
    return folder / name


def test_8bit_png(tmp_path):
    path = _one_file(tmp_path, "colour.png")
    bgr = _textured(70, 100, 0)
    cv2.imwrite(str(path), bgr)
    x = assert_identical(path.parent, _cfg(3))
    # centre square, area-averaged, RGB order, k / 255: checked against OpenCV directly
    expected = cv2.resize(bgr[:, 15:85], (SIZE, SIZE), interpolation=cv2.INTER_AREA)[:, :, ::-1].transpose(2, 0, 1)
    assert np.array_equal(x, expected.astype(np.float32) / np.float32(255))


def test_16bit_png(tmp_path):
    path = _one_file(tmp_path, "deep.png")
    rng = np.random.default_rng(1)
    deep = (_textured(80, 96, 1).astype(np.uint16) * 257 + rng.integers(-128, 128, (80, 96, 3))).astype(np.uint16)
    cv2.imwrite(str(path), deep)
    assert cv2.imread(str(path), cv2.IMREAD_UNCHANGED).dtype == np.uint16
    x = assert_identical(path.parent, _cfg(3))
    # resized at 16 bits, then rounded to the nearest 8-bit level: not the old training loader's truncation
    square = cv2.resize(deep[:, 8:88], (SIZE, SIZE), interpolation=cv2.INTER_AREA).astype(np.uint32)
    rounded = ((square * 255 + 32767) // 65535)[:, :, ::-1].transpose(2, 0, 1)
    assert np.array_equal(np.rint(x * 255), rounded)
    truncated = cv2.resize((deep >> 8).astype(np.uint8)[:, 8:88], (SIZE, SIZE), interpolation=cv2.INTER_AREA)
    assert not np.array_equal(np.rint(x * 255), truncated[:, :, ::-1].transpose(2, 0, 1))


def test_grayscale_jpeg_into_an_rgb_model(tmp_path):
    path = _one_file(tmp_path, "gray.jpg")
    cv2.imwrite(str(path), cv2.cvtColor(_textured(72, 90, 2), cv2.COLOR_BGR2GRAY), [cv2.IMWRITE_JPEG_QUALITY, 90])
    x = assert_identical(path.parent, _cfg(3))
    assert np.array_equal(x[0], x[1]) and np.array_equal(x[1], x[2])  # replicated into R, G and B
    assert x.std() > 0.05


def test_colour_png_into_a_grayscale_model(tmp_path):
    path = _one_file(tmp_path, "colour.png")
    bgr = _textured(64, 80, 3)
    cv2.imwrite(str(path), bgr)
    x = assert_identical(path.parent, _cfg(1))
    luma = cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY)[:, 8:72].astype(np.float32) / 255  # ITU-R 601, within rounding
    assert np.abs(x[0] - luma).max() <= 2 / 255


def test_image_smaller_than_the_model(tmp_path):
    path = _one_file(tmp_path, "small.png")
    bgr = _textured(20, 28, 4)
    cv2.imwrite(str(path), bgr)
    x = assert_identical(path.parent, _cfg(3))
    grown = cv2.resize(bgr[:, 4:24], (SIZE, SIZE), interpolation=cv2.INTER_LINEAR)  # bilinear when enlarging
    assert np.array_equal(np.rint(x * 255).astype(np.uint8), grown[:, :, ::-1].transpose(2, 0, 1))


def test_exif_rotated_jpeg_with_stretch_crop(tmp_path):
    from PIL import Image

    path = _one_file(tmp_path, "rotated.jpg")
    stored = np.full((32, 48, 3), 40, np.uint8)  # RGB, landscape as stored
    stored[:16, :16] = (230, 20, 20)  # a red top-left corner
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 degrees clockwise to display
    buffer = io.BytesIO()
    Image.fromarray(stored).save(buffer, "JPEG", quality=95, exif=exif.tobytes())
    path.write_bytes(buffer.getvalue())
    cfg = _cfg(3, crop="stretch")  # the whole image: the rotation shows in where the corner lands
    x = assert_identical(path.parent, cfg)
    # displayed portrait 48x32 with the red corner top-right; stretched to 64x64 it covers rows 0..21, cols 32..63
    red, green = x[0] * 255, x[1] * 255
    assert red[4, 56] > 180 and green[4, 56] < 80, "the EXIF orientation was not applied"
    assert red[4, 6] < 80, "the EXIF orientation was not applied"
    assert red[40, 56] < 80
    # and the rule is the contract's: the same pixels as its own loader with the config's crop
    assert np.array_equal(load_pixels(path, Preprocess.from_config(cfg.data)), np.rint(x * 255).astype(np.uint8))


def test_a_calibration_folder_holds_the_images_training_would_read(tmp_path):
    folder = tmp_path / "images"
    (folder / "sub").mkdir(parents=True)
    (folder / ".thumbnails").mkdir()
    for i, path in enumerate([folder / "a.png", folder / "sub" / "b.jpg", folder / ".hidden.png",
                              folder / ".thumbnails" / "c.png"]):
        cv2.imwrite(str(path), _textured(20, 24, seed=i))
    cfg = _cfg(3)
    train = load_dataset(cfg, "train", str(folder)).float_batch(slice(None)).numpy()
    calib = read_images(folder, cfg)
    assert len(train) == 2 and "2 images" in calib.source  # the hidden file and folder are left out by both
    assert np.array_equal(train, calib.images)


def test_stretch_crop_is_reachable_from_the_config(tmp_path):
    path = _one_file(tmp_path, "wide.png")
    bgr = _textured(40, 96, 5)
    cv2.imwrite(str(path), bgr)
    centre = assert_identical(path.parent, _cfg(3))
    stretch = assert_identical(path.parent, _cfg(3, crop="stretch"))
    whole = cv2.resize(bgr, (SIZE, SIZE), interpolation=cv2.INTER_AREA)[:, :, ::-1].transpose(2, 0, 1)
    assert np.array_equal(np.rint(stretch * 255).astype(np.uint8), whole)
    assert not np.array_equal(centre, stretch)


def test_exported_onnx_files_describe_the_preprocessing(tmp_path):
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from helpers import TINY_DIGITS

    from alitool.export.onnx import export_networks
    from alitool.models import ALI

    cfg = load_config("digits", [*TINY_DIGITS, "data.crop=stretch"])
    ali = ALI(cfg)
    meta = meta_from_config(cfg)
    pair = export_networks(ali.encoder, ali.decoder, meta, tmp_path, exporter="torchscript", log=lambda m: None)
    expected = Preprocess.from_meta(meta).describe(meta.value_range)
    assert Preprocess.from_meta(meta).crop == "stretch"
    for path in (pair.encoder_path, pair.decoder_path):
        model = onnx.load(str(path))
        values = {p.key: p.value for p in model.metadata_props}
        assert model.model_version == CONTRACT_VERSION
        for key in ("channel_order", "layout", "crop", "resize", "grayscale", "value_range", "scale", "alpha",
                    "exif", "jpeg", "depth"):
            assert values[f"alitool.preprocess.{key}"] == expected[f"alitool.preprocess.{key}"]
        assert values["alitool.preprocess.crop"].startswith("stretch")
        assert values["alitool.preprocess.channel_order"] == "grayscale (one channel)"
        assert "0.299 R + 0.587 G + 0.114 B" in values["alitool.preprocess.grayscale"]
        assert values["alitool.preprocess.layout"] == "NCHW float32, [N, 1, 8, 8]"


def test_docs_list_every_preprocessing_key():
    docs = (Path(__file__).resolve().parents[1] / "docs" / "export.md").read_text(encoding="utf-8")
    for key in Preprocess(SIZE, 3).describe():
        assert f"| `{key}` |" in docs, f"docs/export.md does not list {key}"
    assert "model_version" in docs
