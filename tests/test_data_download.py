"""Checksummed, atomic downloads against a real HTTP server on 127.0.0.1: a good file, a file with the wrong
checksum, a truncated transfer, a refused connection; and a dataset downloaded end to end, then loaded."""

from __future__ import annotations

import gzip
import hashlib
import http.server
import socket
import struct
import threading
from pathlib import Path

import numpy as np
import pytest

from alitool.config import load_config
from alitool.data import load_dataset, mnist
from alitool.data.download import ChecksumError, DownloadError, Remote, download, fetch_files, verify_checksum
from alitool.errors import UserError

PAYLOAD = bytes(range(256)) * 300  # 76.8 kB: several read chunks' worth is not needed, one is enough


class _Handler(http.server.SimpleHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 (http.server's naming)
        if self.path == "/truncated.bin":  # announces the full length, sends half, hangs up
            self.send_response(200)
            self.send_header("Content-Length", str(len(PAYLOAD)))
            self.end_headers()
            self.wfile.write(PAYLOAD[: len(PAYLOAD) // 2])
            self.wfile.flush()
            self.close_connection = True
            return
        super().do_GET()

    def log_message(self, *args):  # keep the test output clean
        pass


@pytest.fixture
def server(tmp_path):
    root = tmp_path / "served"
    root.mkdir()
    (root / "good.bin").write_bytes(PAYLOAD)

    def handler(*args, **kwargs):
        return _Handler(*args, directory=str(root), **kwargs)

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", root
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    monkeypatch.setenv("ALITOOL_DATA", str(tmp_path / "default-data"))
    monkeypatch.delenv("ALITOOL_OFFLINE", raising=False)


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def test_download_verifies_sha256_and_md5_and_writes_in_place(server, tmp_path):
    url, _ = server
    dest = tmp_path / "data"
    path = download(Remote("good.bin", f"{url}/good.bin", sha256=hashlib.sha256(PAYLOAD).hexdigest()), dest,
                    progress=False)
    assert path == dest / "good.bin" and path.read_bytes() == PAYLOAD and _leftovers(dest) == ["good.bin"]
    remote = Remote("copy.bin", f"{url}/good.bin", md5=hashlib.md5(PAYLOAD).hexdigest())
    verify_checksum(download(remote, dest, progress=False), remote)


def test_wrong_checksum_keeps_nothing_under_the_official_name(server, tmp_path):
    url, _ = server
    dest = tmp_path / "data"
    with pytest.raises(ChecksumError, match=r"good.bin: the downloaded file's sha256 [0-9a-f]{64} does not match"):
        download(Remote("good.bin", f"{url}/good.bin", sha256="0" * 64), dest, progress=False)
    assert _leftovers(dest) == []  # no file, no temporary left behind


def test_truncated_transfer_keeps_nothing(server, tmp_path):
    url, _ = server
    dest = tmp_path / "data"
    with pytest.raises(DownloadError, match=r"truncated|failed after"):
        download(Remote("big.bin", f"{url}/truncated.bin", sha256=hashlib.sha256(PAYLOAD).hexdigest()), dest,
                 progress=False)
    assert _leftovers(dest) == []


def test_a_local_file_with_the_wrong_checksum_is_reported_as_such(tmp_path):
    path = tmp_path / "train_32x32.mat"
    path.write_bytes(b"not the official file")
    remote = Remote("train_32x32.mat", "http://example.invalid/train_32x32.mat", md5="e26dedcc434d2e4c54c9b2d4a06d8373")
    with pytest.raises(ChecksumError, match=r"train_32x32.mat: md5 [0-9a-f]{32} does not match the official "
                                            r"e26dedcc434d2e4c54c9b2d4a06d8373: the file is corrupt or incomplete"):
        verify_checksum(path, remote)


def test_unreachable_host_gives_one_line_naming_files_folder_and_url(tmp_path):
    with socket.socket() as s:  # a port nobody listens on: the connection is refused at once
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    base = f"http://127.0.0.1:{port}/housenumbers/"
    remotes = [Remote("extra_32x32.mat", base + "extra_32x32.mat", md5="a" * 32)]
    with pytest.raises(UserError) as err:
        fetch_files("svhn", remotes, tmp_path / "svhn", source=base, companions=["extra_32x32.mat", "test_32x32.mat"])
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith("svhn: missing extra_32x32.mat, test_32x32.mat in ")
    assert str(tmp_path / "svhn") in msg and base in msg and "refused" in msg.lower()
    assert not (tmp_path / "svhn").exists()  # a failed attempt leaves no folder behind


def test_offline_switch_skips_the_network(tmp_path, monkeypatch):
    monkeypatch.setenv("ALITOOL_OFFLINE", "1")
    with pytest.raises(UserError, match=r"mnist: missing train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz .*"
                                        r"ALITOOL_OFFLINE is set.*https://ossci-datasets.s3.amazonaws.com/mnist/"):
        load_dataset(load_config("mnist"), "train")


def _idx_gz(array: np.ndarray) -> bytes:
    return gzip.compress(bytes([0, 0, 8, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes())


def test_mnist_is_downloaded_verified_then_loaded(server, tmp_path, monkeypatch):
    url, root = server
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(9, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, size=9).astype(np.uint8)
    files = {"t10k-images-idx3-ubyte.gz": _idx_gz(images), "t10k-labels-idx1-ubyte.gz": _idx_gz(labels)}
    for name, raw in files.items():
        (root / name).write_bytes(raw)
    # the loader reads its source URL and checksums at call time: point them at the local server
    monkeypatch.setattr(mnist, "MNIST_SOURCE", url + "/")
    monkeypatch.setattr(mnist, "MNIST_MD5", {**mnist.MNIST_MD5, **{n: hashlib.md5(r).hexdigest()
                                                                   for n, r in files.items()}})
    ds = load_dataset(load_config("mnist"), "test", str(tmp_path / "mnist-data"))
    np.testing.assert_array_equal(ds.x[:, 0], images)
    np.testing.assert_array_equal(ds.y, labels)
    assert _leftovers(tmp_path / "mnist-data") == sorted(files)
    # a corrupted copy on the server is refused and nothing is kept
    (root / "t10k-images-idx3-ubyte.gz").write_bytes(files["t10k-images-idx3-ubyte.gz"][:-10] + b"0123456789")
    with pytest.raises(ChecksumError):
        load_dataset(load_config("mnist"), "test", str(tmp_path / "other"))
    assert _leftovers(tmp_path / "other") == []
