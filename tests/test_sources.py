"""Sources and decoding on real files: every bad input is a file made here, never a mock.

Library level (no model): what is decoded, what is skipped and why, in which order, with bounded memory.
"""

from __future__ import annotations

import os
import socket
import struct

import cv2
import numpy as np
import pytest
from helpers import huge_png, rgb_image

from alitool.contract.preprocess import Preprocess, image_dimensions, load_image, load_pixels, prepare_frame
from alitool.encoding.batching import batches
from alitool.encoding.decoding import IMAGE_CHUNK, Notice, Sample, decode_stream
from alitool.io import BadInput
from alitool.io.sources import ImageInput, Skipped, VideoInput, expand_sources, parse_frame_ref
from alitool.io.video import VideoFrames, read_frame

RGB32 = Preprocess(image_size=32, channels=3)
GRAY8 = Preprocess(image_size=8, channels=1)


def _write(path, data: bytes) -> str:
    path.write_bytes(data)
    return str(path)


def _video(path, frames: int, size=(64, 48), fourcc="MJPG") -> str:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), 10, size)
    assert writer.isOpened()
    for i in range(frames):
        frame = np.zeros((size[1], size[0], 3), np.uint8)
        frame[:, : (i * 7) % size[0] + 1] = 200
        writer.write(frame)
    writer.release()
    return str(path)


def _decode_all(sources, pre=RGB32, workers=2):
    out = list(decode_stream(expand_sources(sources), pre, workers=workers))
    good = [o for o in out if isinstance(o, Sample)]
    skipped = {os.path.basename(o.source): o.reason for o in out if isinstance(o, Skipped)}
    return good, skipped, out


def test_bad_image_files_are_skipped_with_a_reason(tmp_path):
    good = tmp_path / "good.jpg"
    cv2.imwrite(str(good), rgb_image())
    jpeg, png = good.read_bytes(), cv2.imencode(".png", rgb_image())[1].tobytes()
    _write(tmp_path / "zero.png", b"")
    _write(tmp_path / "trunc.jpg", jpeg[: len(jpeg) // 2])
    _write(tmp_path / "trunc.png", png[: len(png) // 2])
    _write(tmp_path / "text.jpg", b"this is not a picture\n")
    _write(tmp_path / "notes.xyz", b"??")
    huge_png(tmp_path / "huge.png", 20000)
    good_rows, skipped, out = _decode_all([str(tmp_path)])
    assert [s.record.source for s in good_rows] == [str(good)]
    assert set(skipped) == {"zero.png", "trunc.jpg", "trunc.png", "text.jpg", "notes.xyz", "huge.png"}
    assert "empty file" in skipped["zero.png"]
    for name in ("trunc.jpg", "trunc.png", "text.jpg"):
        assert "cannot be decoded" in skipped[name]
    assert "unknown file type '.xyz'" in skipped["notes.xyz"]
    assert "20000x20000" in skipped["huge.png"] and "limit" in skipped["huge.png"]
    # results come in input order (names sorted), skipped ones in their place
    names = [os.path.basename(o.record.source if isinstance(o, Sample) else o.source) for o in out]
    assert names == sorted(names)


def test_huge_image_is_refused_from_its_header_not_decoded(tmp_path):
    path = huge_png(tmp_path / "huge.png", 20000)
    assert os.path.getsize(path) < 200_000  # 400 Mpixel (1.2 GB as RGB) in a small file
    assert image_dimensions(open(path, "rb").read()) == (20000, 20000)
    with pytest.raises(BadInput, match="400 Mpixel"):
        load_image(path, RGB32)
    # under a generous limit it is a valid image (which is why the header check matters)
    small = huge_png(tmp_path / "ok.png", 300)
    assert load_image(small, Preprocess(32, 1, max_pixels=10**6)).shape == (1, 32, 32)


def _bmp_header(width: int, height: int) -> bytes:
    """A 24-bit BMP's file and info headers (no pixels): enough for Pillow's lazy header reader."""
    info = struct.pack("<IiiHHIIiiII", 40, width, height, 1, 24, 0, 0, 2835, 2835, 0, 0)
    return b"BM" + struct.pack("<IHHI", 14 + 40 + 3 * width * height, 0, 0, 14 + 40) + info


def test_huge_headers_read_by_pillow_are_refused_quietly_without_changing_pillow(tmp_path, recwarn):
    from PIL import Image

    limit = Image.MAX_IMAGE_PIXELS
    bomb = _write(tmp_path / "bomb.bmp", _bmp_header(20000, 20000))  # over Pillow's error limit
    big = _write(tmp_path / "big.bmp", _bmp_header(10000, 10000))  # over its warning limit, under its error one
    with pytest.raises(BadInput, match="over the limit"):
        load_image(bomb, RGB32)
    with pytest.raises(BadInput, match="10000x10000 .100 Mpixel., over the 64 Mpixel limit"):
        load_image(big, RGB32)
    assert image_dimensions(open(big, "rb").read()) == (10000, 10000)
    assert Image.MAX_IMAGE_PIXELS == limit and not [w for w in recwarn if "decompression" in str(w.message)]


def test_jpeg_header_parser_matches_decoder(tmp_path):
    for h, w in ((40, 48), (480, 640), (17, 1)):
        data = cv2.imencode(".jpg", np.zeros((h, w, 3), np.uint8))[1].tobytes()
        assert image_dimensions(data) == (w, h)


def test_grayscale_rgba_16bit_and_cmyk_are_converted_not_skipped(tmp_path):
    from PIL import Image

    bgr = rgb_image(32, 32)
    rgb = bgr[..., ::-1]
    cv2.imwrite(str(tmp_path / "rgb.png"), bgr)
    cv2.imwrite(str(tmp_path / "gray.png"), cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY))
    cv2.imwrite(str(tmp_path / "rgba.png"), np.dstack([bgr, np.full((32, 32), 77, np.uint8)]))
    cv2.imwrite(str(tmp_path / "deep.png"), bgr.astype(np.uint16) * 257)  # 16-bit, same picture
    Image.fromarray(rgb).convert("CMYK").save(tmp_path / "cmyk.jpg", quality=95)
    Image.fromarray(rgb).save(tmp_path / "rgb_ref.jpg", quality=95)
    expected = rgb.transpose(2, 0, 1) / 255.0
    x = {name: load_image(tmp_path / name, RGB32) for name in os.listdir(tmp_path)}
    assert x["rgb.png"].dtype == np.float32 and x["rgb.png"].shape == (3, 32, 32)
    np.testing.assert_allclose(x["rgb.png"], expected, atol=1e-6)
    np.testing.assert_allclose(x["rgba.png"], expected, atol=1e-6)  # alpha dropped, colour kept
    np.testing.assert_array_equal(x["deep.png"], x["rgb.png"])  # 16 bits rounded to the same 8-bit levels
    assert np.allclose(x["gray.png"][0], x["gray.png"][1])  # grayscale replicated for an RGB model
    # CMYK decodes to the same colours as the RGB JPEG, up to JPEG and colour-conversion error
    assert np.abs(x["cmyk.jpg"] - x["rgb_ref.jpg"]).mean() < 0.03
    # a grayscale model gets one channel from a colour file
    assert load_image(tmp_path / "rgb.png", GRAY8).shape == (1, 8, 8)


def test_resize_is_center_crop_then_area(tmp_path):
    # Random pixels everywhere: another crop, or any interpolation but area averaging, gives other values.
    wide = np.random.default_rng(0).integers(0, 256, (40, 80), dtype=np.uint8)
    cv2.imwrite(str(tmp_path / "wide.png"), wide)
    pixels = load_pixels(tmp_path / "wide.png", Preprocess(10, 1))
    # the central 40x40 square (columns 20..59), each 4x4 block averaged, rounded half to even: without OpenCV
    blocks = wide[:, 20:60].reshape(10, 4, 10, 4).mean(axis=(1, 3))
    assert pixels.shape == (1, 10, 10) and np.array_equal(pixels[0], np.rint(blocks))
    assert np.array_equal(load_image(tmp_path / "wide.png", Preprocess(10, 1)), pixels / np.float32(255))
    # enlarging is bilinear: a 5x10 image's central 5x5 square grown to 10x10
    small = wide[:5, :10]
    cv2.imwrite(str(tmp_path / "small.png"), small)
    grown = load_pixels(tmp_path / "small.png", Preprocess(10, 1))[0]
    assert np.array_equal(grown, cv2.resize(small[:, 2:7], (10, 10), interpolation=cv2.INTER_LINEAR))
    assert not np.array_equal(grown, cv2.resize(small[:, 2:7], (10, 10), interpolation=cv2.INTER_AREA))


def test_large_jpeg_reduced_decoding_stays_close_to_full_decoding(tmp_path):
    big = cv2.resize(rgb_image(60, 80), (640, 480), interpolation=cv2.INTER_CUBIC)
    cv2.imwrite(str(tmp_path / "big.jpg"), big, [cv2.IMWRITE_JPEG_QUALITY, 95])
    fast = load_image(tmp_path / "big.jpg", RGB32)  # 1/4-scale DCT decoding, then area resize
    full = prepare_frame(cv2.imread(str(tmp_path / "big.jpg")), RGB32)
    assert np.abs(fast - full).mean() < 2 / 255
    exact = load_image(tmp_path / "big.jpg", Preprocess(32, 3, jpeg_draft=False))  # --full-jpeg-decode
    np.testing.assert_array_equal(exact, full)
    assert not np.array_equal(fast, full)  # the fast path did take the reduced decoding


def test_unicode_spaces_and_lists(tmp_path):
    folder = tmp_path / "dossier été"
    folder.mkdir()
    names = ["ünïcødé 图像.png", "a b.jpg", "plain.png"]
    for i, name in enumerate(names):
        (folder / name).write_bytes(cv2.imencode(os.path.splitext(name)[1], rgb_image(seed=i))[1].tobytes())
    listing = tmp_path / "list.txt"
    listing.write_text(f"# two of them\n\ndossier été/{names[0]}\n{folder / names[2]}\nmissing.png\n",
                       encoding="utf-8")
    good, skipped, _ = _decode_all([str(folder), str(listing)])
    assert [os.path.basename(s.record.source) for s in good] == sorted(names) + [names[0], names[2]]
    assert skipped == {"missing.png": "no such file or folder"}


def test_globs_missing_paths_and_empty_folders(tmp_path):
    for i in range(3):
        cv2.imwrite(str(tmp_path / f"img{i}.png"), rgb_image(seed=i))
    (tmp_path / "empty").mkdir()
    items = list(expand_sources([str(tmp_path / "img*.png"), str(tmp_path / "nope.png"),
                                 str(tmp_path / "empty"), str(tmp_path / "*.gif")]))
    assert [type(i) for i in items] == [ImageInput] * 3 + [Skipped] * 3
    assert items[3].reason == "no such file or folder"
    assert items[4].reason == "the folder holds no images or videos"
    assert items[5].reason == "the pattern matches no files"


def test_symlink_loops(tmp_path):
    cv2.imwrite(str(tmp_path / "ok.png"), rgb_image())
    os.symlink("b.png", tmp_path / "a.png")  # a -> b -> a: ELOOP on open
    os.symlink("a.png", tmp_path / "b.png")
    (tmp_path / "sub").mkdir()
    os.symlink("..", tmp_path / "sub" / "up")  # a folder cycle
    os.symlink("gone.png", tmp_path / "dangling.png")
    good, skipped, _ = _decode_all([str(tmp_path), str(tmp_path / "a.png")])
    assert [os.path.basename(s.record.source) for s in good] == ["ok.png"]
    assert "symbolic link loop" in skipped["a.png"] and "symbolic link loop" in skipped["b.png"]
    assert "symbolic link loop" in skipped["up"]
    assert "broken symbolic link" in skipped["dangling.png"]


def test_entries_that_cannot_be_opened(tmp_path):
    cv2.imwrite(str(tmp_path / "ok.png"), rgb_image())
    os.mkfifo(tmp_path / "fifo.png")  # opening it would block forever
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(tmp_path / "sock.jpg"))  # not openable at all, even by root
    try:
        good, skipped, _ = _decode_all([str(tmp_path), str(tmp_path / "fifo.png")])
    finally:
        sock.close()
    assert len(good) == 1
    assert set(skipped) == {"fifo.png", "sock.jpg"}
    assert all("not a regular file" in reason for reason in skipped.values())


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads mode-000 files; covered as root by "
                    "test_cli_run.py::test_unreadable_file_as_root_without_dac_override")
def test_unreadable_file(tmp_path):
    path = tmp_path / "secret.png"
    cv2.imwrite(str(path), rgb_image())
    path.chmod(0)
    with pytest.raises(BadInput, match="permission denied"):
        load_image(path, RGB32)


def test_videos_stride_frame_refs_and_bad_videos(tmp_path):
    clip = _video(tmp_path / "clip.avi", 10)
    _write(tmp_path / "corrupt.mp4", os.urandom(4096))
    none = cv2.VideoWriter(str(tmp_path / "none.avi"), cv2.VideoWriter_fourcc(*"MJPG"), 10, (64, 48))
    none.release()  # a valid AVI holding zero frames
    assert [n for n, _, _ in VideoFrames(clip, stride=3)] == [0, 3, 6, 9]
    good, skipped, _ = _decode_all([str(tmp_path)], pre=GRAY8)
    assert [(s.record.frame, s.record.time_s) for s in good] == [(i, pytest.approx(i / 10)) for i in range(10)]
    assert "cannot open the video" in skipped["corrupt.mp4"]
    assert skipped["none.avi"] == "the video has no frames"
    # one frame by reference, the same frame the full pass saw
    assert parse_frame_ref(f"{clip}@7") == (clip, 7)
    np.testing.assert_array_equal(prepare_frame(read_frame(clip, 7), GRAY8), good[7].image)
    with pytest.raises(BadInput, match="no frame 12"):
        read_frame(clip, 12)
    items = list(expand_sources([f"{clip}@7"]))
    assert items == [VideoInput(clip, 1, frame=7)]
    (frame7,) = [o for o in decode_stream(items, GRAY8) if isinstance(o, Sample)]
    assert frame7.record.frame == 7 and np.array_equal(frame7.image, good[7].image)


def test_truncated_video_keeps_its_good_frames_with_a_notice(tmp_path):
    clip = _video(tmp_path / "clip.avi", 40)
    data = open(clip, "rb").read()
    cut = _write(tmp_path / "cut.avi", data[: len(data) // 3])
    out = list(decode_stream(expand_sources([cut]), GRAY8))
    frames = [o for o in out if isinstance(o, Sample)]
    notices = [o for o in out if isinstance(o, Notice)]
    if not frames:  # this FFmpeg refuses the cut file outright: then it must be a skip with a reason
        assert isinstance(out[0], Skipped) and len(out) == 1
        return
    assert 0 < len(frames) < 40 and len(notices) == 1 and "stopped after" in notices[0].message


def test_memory_is_bounded_by_the_window_not_the_input_count(tmp_path):
    cv2.imwrite(str(tmp_path / "one.png"), rgb_image())
    pulled = 0

    def endless():
        nonlocal pulled
        while True:
            pulled += 1
            yield ImageInput(str(tmp_path / "one.png"))

    stream = decode_stream(endless(), RGB32, workers=2, chunks_ahead=4)
    for i, _ in enumerate(stream):
        if i == 200:
            break
    stream.close()
    # consumed 201 images; at most the queue (4 chunks) plus the chunks being decoded and built were read ahead
    assert pulled <= 201 + IMAGE_CHUNK * 8


def test_batches_are_fixed_size_padded_and_in_value_range(tmp_path):
    for i in range(5):
        cv2.imwrite(str(tmp_path / f"{i}.png"), rgb_image(seed=i))
    skipped = []
    stream = decode_stream(expand_sources([str(tmp_path), str(tmp_path / "x.png")]), GRAY8)
    got = list(batches(stream, GRAY8, 4, value_range=(-1.0, 1.0), on_skip=skipped.append))
    assert [b.count for b in got] == [4, 1] and all(b.images.shape == (4, 1, 8, 8) for b in got)
    assert got[0].images.min() >= -1.0 and got[0].images.min() < 0.0  # mapped from [0, 1] to [-1, 1]
    assert np.all(got[1].images[1:] == 0.0)  # padding
    assert [s.source for s in skipped] == [str(tmp_path / "x.png")]
