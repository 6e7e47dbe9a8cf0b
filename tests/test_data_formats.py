"""The dataset loaders on tiny files written in each exact official format (SVHN .mat, CIFAR-10 binary records and
python pickles, IDX gz, a CelebA folder with attribute and partition files, a Tiny ImageNet tree, a folder of
images): images, labels, attributes, splits and value ranges; truncated or malformed files give one-line errors."""

from __future__ import annotations

import gzip
import io
import os
import pickle
import struct
import tarfile
import zipfile
from pathlib import Path

import cv2
import numpy as np
import pytest
import scipy.io
from click.testing import CliRunner
from helpers import ATTRS, write_celeba

from alitool.config import load_config
from alitool.data import ArrayDataset, iterate_batches, load_dataset
from alitool.data.cifar10 import RestrictedUnpickler, restricted_loads
from alitool.data.imagefiles import ImageSource, load_images
from alitool.errors import UserError


@pytest.fixture(autouse=True)
def _no_network_no_home(tmp_path, monkeypatch):
    # Default data folders and the decode cache live in tmp_path; no test here may reach for the network.
    monkeypatch.setenv("ALITOOL_DATA", str(tmp_path / "default-data"))
    monkeypatch.setenv("ALITOOL_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("ALITOOL_OFFLINE", "1")


def cfg_for(name: str, *overrides: str):
    return load_config(name, list(overrides))


# -- SVHN --------------------------------------------------------------------------------------------------
def write_svhn_mat(path: Path, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """An official-layout SVHN file: X uint8 [32, 32, 3, N], y [N, 1] in 1..10 (10 = digit 0), MATLAB v5."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, 3, 32, 32), dtype=np.uint8)  # NCHW, what the loader must return
    digits = np.arange(n) % 10
    y = np.where(digits == 0, 10, digits).astype(np.uint8)[:, None]
    scipy.io.savemat(str(path), {"X": images.transpose(2, 3, 1, 0), "y": y}, format="5")
    return images, digits


def test_svhn_splits_follow_the_official_code_and_labels_map_10_to_0(tmp_path):
    extra, extra_y = write_svhn_mat(tmp_path / "extra_32x32.mat", 30, 1)
    train, train_y = write_svhn_mat(tmp_path / "train_32x32.mat", 20, 2)
    test, test_y = write_svhn_mat(tmp_path / "test_32x32.mat", 10, 3)
    cfg = cfg_for("svhn")
    for split, images, labels in (("train", extra, extra_y), ("val", train, train_y), ("test", test, test_y)):
        ds = load_dataset(cfg, split, str(tmp_path))
        assert ds.x.shape == (len(images), 3, 32, 32) and ds.x.dtype == np.uint8
        np.testing.assert_array_equal(ds.x, images)  # HWCN -> NCHW with the channel order kept
        np.testing.assert_array_equal(ds.y, labels)
    assert set(load_dataset(cfg, "train", str(tmp_path)).y) == set(range(10))  # 10 became 0
    batch = load_dataset(cfg, "test", str(tmp_path)).float_batch(np.arange(4))
    assert batch.dtype.is_floating_point and 0.0 <= float(batch.min()) and float(batch.max()) <= 1.0


def test_svhn_truncated_or_wrong_files_are_named_in_one_line(tmp_path):
    write_svhn_mat(tmp_path / "extra_32x32.mat", 20, 0)
    raw = (tmp_path / "extra_32x32.mat").read_bytes()
    (tmp_path / "extra_32x32.mat").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(UserError, match=r"extra_32x32.mat: not a readable MATLAB v5 file") as err:
        load_dataset(cfg_for("svhn"), "train", str(tmp_path))
    assert "\n" not in str(err.value)
    scipy.io.savemat(str(tmp_path / "test_32x32.mat"), {"X": np.zeros((28, 28, 3, 2), np.uint8), "y": [[1], [2]]})
    with pytest.raises(UserError, match=r"X should be uint8 \[32, 32, 3, N\]"):
        load_dataset(cfg_for("svhn"), "test", str(tmp_path))


# -- CIFAR-10 ----------------------------------------------------------------------------------------------
def cifar_records(n: int, seed: int) -> tuple[bytes, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, 3, 32, 32), dtype=np.uint8)
    labels = rng.integers(0, 10, size=n).astype(np.uint8)
    raw = b"".join(bytes([labels[i]]) + images[i].tobytes() for i in range(n))  # label byte, then R, G, B planes
    return raw, images, labels.astype(np.int64)


def write_cifar_binary_tar(path: Path, per_batch: int = 4) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    train_x, train_y = [], []
    with tarfile.open(path, "w:gz") as tar:
        for i, name in enumerate([f"data_batch_{k}.bin" for k in range(1, 6)] + ["test_batch.bin"]):
            raw, x, y = cifar_records(per_batch, i)
            info = tarfile.TarInfo(f"cifar-10-batches-bin/{name}")
            info.size = len(raw)
            tar.addfile(info, io.BytesIO(raw))
            if name.startswith("data"):
                train_x.append(x)
                train_y.append(y)
            else:
                test_x, test_y = x, y
    return np.concatenate(train_x), np.concatenate(train_y), test_x, test_y


def test_cifar10_binary_archive_gives_the_45k_5k_split_proportions(tmp_path):
    train_x, train_y, test_x, test_y = write_cifar_binary_tar(tmp_path / "cifar-10-binary.tar.gz")  # 20 train
    cfg = cfg_for("cifar10")
    train, val, test = (load_dataset(cfg, s, str(tmp_path)) for s in ("train", "val", "test"))
    assert len(train) == 18 and len(val) == 2  # the last tenth, as slice(45000, 50000) of 50,000
    np.testing.assert_array_equal(np.concatenate([train.x, val.x]), train_x)
    np.testing.assert_array_equal(np.concatenate([train.y, val.y]), train_y)
    np.testing.assert_array_equal(test.x, test_x)
    np.testing.assert_array_equal(test.y, test_y)


def test_cifar10_truncated_archive_and_partial_records_are_reported(tmp_path):
    write_cifar_binary_tar(tmp_path / "cifar-10-binary.tar.gz", per_batch=50)
    raw = (tmp_path / "cifar-10-binary.tar.gz").read_bytes()
    (tmp_path / "cifar-10-binary.tar.gz").write_bytes(raw[: len(raw) * 2 // 3])
    with pytest.raises(UserError, match="truncated or corrupt archive"):
        load_dataset(cfg_for("cifar10"), "train", str(tmp_path))
    folder = tmp_path / "other" / "cifar-10-batches-bin"
    folder.mkdir(parents=True)
    raw, _, _ = cifar_records(3, 0)
    (folder / "test_batch.bin").write_bytes(raw[:-100])
    with pytest.raises(UserError, match="not a whole number of 3073-byte CIFAR-10 records"):
        load_dataset(cfg_for("cifar10"), "test", str(tmp_path / "other"))


class _Python2Pickler(pickle._Pickler):
    """Writes what Python 2's cPickle wrote for the official CIFAR-10 python batches: bytes as BINSTRING (py2 str)
    and numpy's reconstructor under its old module name."""

    dispatch = dict(pickle._Pickler.dispatch)

    def save_py2_str(self, obj: bytes) -> None:
        if len(obj) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(obj)]) + obj)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(obj)) + obj)
        self.memoize(obj)

    dispatch[bytes] = save_py2_str

    def save_global(self, obj, name=None):
        if getattr(obj, "__name__", "") == "_reconstruct":
            self.write(pickle.GLOBAL + b"numpy.core.multiarray\n_reconstruct\n")
            self.memoize(obj)
        else:
            super().save_global(obj, name)


def python_batch(n: int, seed: int, py2: bool = True) -> tuple[bytes, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
    labels = [int(v) for v in rng.integers(0, 10, size=n)]
    batch = {b"batch_label": b"training batch 1 of 5", b"labels": labels, b"data": data,
             b"filenames": [f"img_{i}.png".encode() for i in range(n)]}
    if py2:
        buf = io.BytesIO()
        _Python2Pickler(buf, protocol=2).dump(batch)
        return buf.getvalue(), data.reshape(-1, 3, 32, 32), np.array(labels)
    return pickle.dumps(batch, protocol=2), data.reshape(-1, 3, 32, 32), np.array(labels)


def test_cifar10_python_version_through_the_restricted_unpickler(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    expected_x, expected_y = [], []
    for i, name in enumerate([f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]):
        raw, x, y = python_batch(3, i, py2=(i % 2 == 0))  # Python 2 layout, and a Python 3 protocol-2 rewrite
        (folder / name).write_bytes(raw)
        expected_x.append(x)
        expected_y.append(y)
    cfg = cfg_for("cifar10")
    everything = load_dataset(cfg, "train-all", str(tmp_path))
    np.testing.assert_array_equal(everything.x, np.concatenate(expected_x[:5]))
    np.testing.assert_array_equal(everything.y, np.concatenate(expected_y[:5]))
    np.testing.assert_array_equal(load_dataset(cfg, "test", str(tmp_path)).x, expected_x[5])


class _Payload:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("evil", ["os.system", "custom class", "builtins.eval"])
def test_restricted_unpickler_refuses_every_other_global(tmp_path, evil):
    marker = tmp_path / "ran"
    if evil == "os.system":
        raw = pickle.dumps({b"data": _Payload(marker)}, protocol=2)
    elif evil == "custom class":
        raw = pickle.dumps({b"labels": [ArrayDataset("x", "train", np.zeros((1, 1), np.float32))]})
    else:
        raw = b"cbuiltins\neval\n(Vopen('" + str(marker).encode() + b"','w')\ntR."
    with pytest.raises(UserError, match=r"refused to load (posix|os|alitool\.data|builtins)\."):
        restricted_loads(raw, "batch")
    assert not marker.exists()
    with pytest.raises(pickle.UnpicklingError):
        RestrictedUnpickler(io.BytesIO(raw)).load()


# -- MNIST / Fashion-MNIST (IDX) -----------------------------------------------------------------------------
def idx_bytes(array: np.ndarray) -> bytes:
    return bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()


def write_idx_set(folder: Path, prefix: str, n: int, seed: int, gz: bool = True) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, size=n).astype(np.uint8)
    folder.mkdir(parents=True, exist_ok=True)
    for kind, arr in (("images-idx3", images), ("labels-idx1", labels)):
        name = f"{prefix}-{kind}-ubyte"
        if gz:
            (folder / f"{name}.gz").write_bytes(gzip.compress(idx_bytes(arr)))
        else:
            (folder / name).write_bytes(idx_bytes(arr))
    return images, labels


def test_idx_gz_files_load_for_mnist_and_fashion_mnist(tmp_path):
    images, labels = write_idx_set(tmp_path / "fm", "train", 12, 0)
    write_idx_set(tmp_path / "fm", "t10k", 5, 1)
    ds = load_dataset(cfg_for("fashion-mnist"), "train", str(tmp_path / "fm"))
    assert ds.x.shape == (12, 1, 28, 28) and ds.x.dtype == np.uint8
    assert ds.x.flags.writeable  # torch.from_numpy warns on read-only arrays
    np.testing.assert_array_equal(ds.x[:, 0], images)
    np.testing.assert_array_equal(ds.y, labels)
    assert len(load_dataset(cfg_for("fashion-mnist"), "test", str(tmp_path / "fm"))) == 5
    # torchvision's layout (MNIST/raw) and unpacked files are found too
    images, _ = write_idx_set(tmp_path / "tv" / "MNIST" / "raw", "t10k", 7, 2, gz=False)
    np.testing.assert_array_equal(load_dataset(cfg_for("mnist"), "test", str(tmp_path / "tv")).x[:, 0], images)


def test_idx_truncated_gzip_and_short_payload_are_reported(tmp_path):
    write_idx_set(tmp_path, "train", 30, 0)
    path = tmp_path / "train-images-idx3-ubyte.gz"
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(UserError, match="truncated gzip file"):
        load_dataset(cfg_for("mnist"), "train", str(tmp_path))
    images = np.zeros((30, 28, 28), np.uint8)
    path.write_bytes(gzip.compress(idx_bytes(images)[:-28]))
    with pytest.raises(UserError, match=r"declares \[30, 28, 28\] = 23520 values but the file holds 23492"):
        load_dataset(cfg_for("mnist"), "train", str(tmp_path))


def test_fashion_mnist_debian_package_is_found_without_data_dir():
    if not Path("/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz").is_file():
        pytest.skip("apt-get install dataset-fashion-mnist to run this test")
    ds = load_dataset(cfg_for("fashion-mnist"), "test")
    assert ds.x.shape == (10000, 1, 28, 28) and np.bincount(ds.y).tolist() == [1000] * 10


# -- CelebA --------------------------------------------------------------------------------------------------
def test_celeba_crops_resizes_and_returns_attributes_per_partition(tmp_path):
    values = write_celeba(tmp_path / "celeba")  # torchvision's layout: <data-dir>/celeba/
    cfg = cfg_for("celeba", "data.image_size=16")
    train = load_dataset(cfg, "train", str(tmp_path))
    val, test = load_dataset(cfg, "val", str(tmp_path)), load_dataset(cfg, "test", str(tmp_path))
    assert (len(train), len(val), len(test)) == (3, 1, 2)
    assert train.x.shape == (3, 3, 16, 16) and train.x.dtype == np.uint8
    assert train.attrs.shape == (3, 40) and train.attrs.dtype == np.uint8 and train.attr_names == tuple(ATTRS)
    np.testing.assert_array_equal(train.attrs, (values[:3] > 0).astype(np.uint8))
    np.testing.assert_array_equal(test.attrs, (values[4:] > 0).astype(np.uint8))
    # centre crop: no blue band left; RGB order: red holds the value, blue is ~0. The band's edge bleeds into the
    # outermost rows (JPEG chroma subsampling; at 16x16 these 178x218 JPEGs are also decoded at 1/4 scale, the one
    # JPEG rule of alitool.contract.preprocess), so those rows are left out; the paper's 64x64 decodes at full size.
    full = load_dataset(cfg_for("celeba", "data.image_size=64"), "train", str(tmp_path))
    for images in (train.x, full.x):
        for i in range(3):
            img = images[i].astype(int)
            assert abs(img[0].mean() - 40 * i) < 4 and img[2, 1:-1].max() < 12 and img[2].mean() < 8, (i, img[2])


def test_celeba_missing_files_give_one_line_with_the_official_page(tmp_path):
    (tmp_path / "list_attr_celeba.txt").write_text("0\n" + " ".join(ATTRS) + "\n")
    with pytest.raises(UserError) as err:
        load_dataset(cfg_for("celeba"), "train", str(tmp_path))
    msg = str(err.value)
    assert "\n" not in msg and "img_align_celeba/" in msg and "list_eval_partition.txt" in msg
    assert "list_attr_celeba.txt" not in msg.split(" in ")[0] and "mmlab.ie.cuhk.edu.hk" in msg


# -- Tiny ImageNet ------------------------------------------------------------------------------------------
def write_tiny_imagenet(root: Path) -> None:
    wnids = ["n02124075", "n01443537"]  # deliberately unsorted in wnids.txt
    (root / "val" / "images").mkdir(parents=True)
    (root / "wnids.txt").write_text("\n".join(wnids) + "\n")
    for k, wnid in enumerate(wnids):
        folder = root / "train" / wnid / "images"
        folder.mkdir(parents=True)
        (root / "train" / wnid / f"{wnid}_boxes.txt").write_text("")
        for i in range(3):
            cv2.imwrite(str(folder / f"{wnid}_{i}.JPEG"), np.full((64, 64, 3), 50 + 100 * k, np.uint8))
    rows = []
    for i, wnid in enumerate([wnids[0], wnids[1], wnids[0]]):
        cv2.imwrite(str(root / "val" / "images" / f"val_{i}.JPEG"), np.full((64, 64, 3), 10 * i, np.uint8))
        rows.append(f"val_{i}.JPEG\t{wnid}\t0\t0\t63\t63")
    (root / "val" / "val_annotations.txt").write_text("\n".join(rows) + "\n")


def test_tiny_imagenet_tree_and_zip_give_the_same_labelled_images(tmp_path):
    write_tiny_imagenet(tmp_path / "tree" / "tiny-imagenet-200")
    cfg = cfg_for("tinyimagenet")
    train = load_dataset(cfg, "train", str(tmp_path / "tree"))
    val = load_dataset(cfg, "val", str(tmp_path / "tree"))
    assert train.x.shape == (6, 3, 64, 64) and train.x.dtype == np.uint8
    # class k = position in the sorted wnids: n01443537 -> 0 (grey 150), n02124075 -> 1 (grey 50)
    assert train.y.tolist() == [0, 0, 0, 1, 1, 1] and abs(int(train.x[0].mean()) - 150) <= 2
    assert val.y.tolist() == [1, 0, 1]
    zpath = tmp_path / "zipped" / "tiny-imagenet-200.zip"
    zpath.parent.mkdir()
    with zipfile.ZipFile(zpath, "w") as zf:
        for path in sorted((tmp_path / "tree").rglob("*")):
            zf.write(path, path.relative_to(tmp_path / "tree").as_posix())
    from_zip = load_dataset(cfg, "train", str(zpath.parent))
    np.testing.assert_array_equal(from_zip.x, train.x)
    np.testing.assert_array_equal(from_zip.y, train.y)


# -- any folder of images -------------------------------------------------------------------------------------
def test_folder_dataset_recurses_resizes_and_skips_bad_images(tmp_path, capsys):
    (tmp_path / "photos" / "a" / "b").mkdir(parents=True)
    cv2.imwrite(str(tmp_path / "photos" / "wide.png"), np.full((40, 80, 3), 200, np.uint8))
    cv2.imwrite(str(tmp_path / "photos" / "a" / "tall.jpg"), np.full((90, 30, 3), 100, np.uint8))
    cv2.imwrite(str(tmp_path / "photos" / "a" / "b" / "gray.png"), np.full((16, 16), 30, np.uint8))
    (tmp_path / "photos" / "a" / "broken.jpg").write_bytes(b"\xff\xd8 definitely not a jpeg")
    (tmp_path / "photos" / "notes.txt").write_text("not an image, not listed")
    ds = load_dataset(cfg_for("folder", "data.image_size=24", "data.channels=1"), "train", str(tmp_path / "photos"))
    assert ds.x.shape == (3, 1, 24, 24) and ds.x.dtype == np.uint8
    assert sorted(int(v) for v in ds.x.reshape(3, -1).mean(axis=1).round()) == [30, 100, 200]
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "broken.jpg" in warnings[0] and "skipped" in warnings[0]
    with pytest.raises(UserError, match="needs --data-dir"):
        load_dataset(cfg_for("folder"), "train", "")


def test_decode_cache_is_reused_and_invalidated_when_a_file_changes(tmp_path):
    for i in range(4):
        cv2.imwrite(str(tmp_path / f"{i}.png"), np.full((10, 10, 3), 20 * i, np.uint8))
    source = ImageSource(tmp_path)
    names = source.list_images()
    first, kept = load_images(source, names, 8, 3, tag="t", cache_min_images=1)
    cached, _ = load_images(source, names, 8, 3, tag="t", cache_min_images=1)
    assert isinstance(cached, np.memmap) and len(list((tmp_path / "cache" / "decoded").glob("*.npy"))) == 2
    assert cached.flags.writeable  # copy-on-write: torch.from_numpy takes it without a warning
    np.testing.assert_array_equal(cached, first)
    cv2.imwrite(str(tmp_path / "3.png"), np.full((10, 10, 3), 250, np.uint8))
    os.utime(tmp_path / "3.png", ns=(1, 1))  # a different mtime even on coarse-clock file systems
    again, _ = load_images(ImageSource(tmp_path), names, 8, 3, tag="t", cache_min_images=1)
    assert int(again[3].mean()) == 250 and kept.tolist() == [0, 1, 2, 3]


def test_batches_of_uint8_images_become_floats_in_0_1(tmp_path):
    images, _ = write_svhn_mat(tmp_path / "test_32x32.mat", 40, 0)
    ds = load_dataset(cfg_for("svhn"), "test", str(tmp_path))
    index = next(iterate_batches(len(ds), 16, seed=0, epoch=0))
    batch = ds.float_batch(index)
    assert batch.shape == (16, 3, 32, 32)
    np.testing.assert_allclose(batch.numpy(), images[index] / 255.0, atol=1e-6)


# -- the CLI: train on SVHN files, and the one-line answer when there are none --------------------------------
def test_cli_train_svhn_on_official_format_files_and_offline_message(tmp_path):
    from alitool.cli import main

    data = tmp_path / "svhn"
    data.mkdir()
    write_svhn_mat(data / "extra_32x32.mat", 24, 0)
    write_svhn_mat(data / "train_32x32.mat", 12, 1)
    runner = CliRunner()
    result = runner.invoke(main, ["train", "svhn", "--data-dir", str(data), "--max-steps", "2", "--batch-size", "8",
                                  "--out", str(tmp_path / "run"), "--set", "train.sample_grid=4"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "run" / "checkpoint.pt").is_file() and "done at step 2" in result.output
    result = runner.invoke(main, ["train", "svhn", "--out", str(tmp_path / "run2")])
    assert result.exit_code == 2 and result.exception is not None and isinstance(result.exception, SystemExit)
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: svhn: missing extra_32x32.mat, train_32x32.mat, "
                                                   "test_32x32.mat in ")
    assert "http://ufldl.stanford.edu/housenumbers/" in lines[0] and "Traceback" not in result.output
