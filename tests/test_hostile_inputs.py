"""Hostile but fair inputs: files that lie about their size or content, numbers out of range, edited metadata,
a resume that would change the networks. Each must end in one line (a skipped input or an error with exit
status 2), never a traceback, and never cost more memory than the pixel limit allows. The bad files are made by
tests/bad_inputs.py."""

from __future__ import annotations

import csv
import json
import os
import re
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from bad_inputs import jpeg_with_stray_byte, nan_tiff, radiance_hdr, random_jpeg, zip_bomb
from helpers import invoke_cli, make_run, save_tiny_model

from alitool.contract.preprocess import BadInput, Preprocess, decode, image_dimensions, read_file
from alitool.errors import UserError

GRAY8 = Preprocess(8, 1)
ROOT = Path(__file__).resolve().parent.parent


# ---------------------------------------------------------------------------------------------------------
# Sizes come from every format's header, and the limit holds.


def test_hdr_named_png_is_sized_from_its_header_and_refused(tmp_path):
    data = radiance_hdr(tmp_path / "photo.png", 12000, 12000).read_bytes()
    assert len(data) < 10_000_000
    assert image_dimensions(data) == (12000, 12000)
    with pytest.raises(BadInput, match=r"12000x12000 \(144 Mpixel\), over the 64 Mpixel limit"):
        decode(data, GRAY8)


def test_small_hdr_still_decodes(tmp_path):
    data = radiance_hdr(tmp_path / "small.hdr", 20, 10).read_bytes()
    assert image_dimensions(data) == (20, 10)
    assert decode(data, Preprocess(8, 3)).shape == (10, 20, 3)


def test_stray_byte_after_app0_does_not_hide_the_jpeg_size(tmp_path, capfd):
    data = jpeg_with_stray_byte(tmp_path / "a.jpg").read_bytes()
    assert image_dimensions(data) == (48, 40)
    with pytest.raises(BadInput, match="over the 0 Mpixel limit"):
        decode(data, Preprocess(8, 1, max_pixels=100))
    assert decode(data, Preprocess(8, 1, jpeg_draft=False)).shape == (40, 48)  # still good under the limit
    assert "Corrupt JPEG" not in capfd.readouterr().err  # the stray byte is dropped before libjpeg sees it


def test_random_bytes_are_not_a_huge_image(tmp_path):
    data = random_jpeg(tmp_path / "noise.jpg").read_bytes()
    with pytest.raises(BadInput) as err:
        decode(data, GRAY8)
    assert "Mpixel" not in str(err.value) and "not a valid JPEG" in str(err.value)


def test_unknown_format_is_refused_before_decoding():
    with pytest.raises(BadInput, match="not an image format whose size can be read from its header"):
        decode(np.random.default_rng(0).bytes(5000), GRAY8)


def test_nan_in_a_float_tiff_is_refused(tmp_path):
    data = nan_tiff(tmp_path / "nan.tiff").read_bytes()
    with pytest.raises(BadInput, match="contains NaN or infinite values"):
        decode(data, GRAY8)


def test_header_and_decoder_must_agree(monkeypatch):
    import alitool.contract.preprocess as preprocess

    png = cv2.imencode(".png", np.zeros((10, 12), np.uint8))[1].tobytes()
    monkeypatch.setattr(preprocess, "image_dimensions", lambda data: (6, 5))  # a header parser fooled
    with pytest.raises(BadInput, match="the header says 6x5 but the decoder gave 12x10"):
        preprocess.decode(png, GRAY8)


def test_a_folder_is_called_a_folder(tmp_path):
    with pytest.raises(BadInput, match="^a folder, not an image file$"):
        read_file(tmp_path)


def test_training_archive_member_bomb_is_refused_before_inflating(tmp_path):
    from alitool.data.imagefiles import ImageSource, decode_all

    source = ImageSource(zip_bomb(tmp_path / "set.zip", 16 << 20))
    with pytest.raises(BadInput, match="decompression bomb"):
        source.read_image("bomb.png")
    warnings = []
    images, kept = decode_all(source, ["bomb.png", "good.png"], 8, 1, warn=warnings.append)
    assert kept.tolist() == [1] and len(warnings) == 1 and "decompression bomb" in warnings[0]


def test_video_frames_obey_the_pixel_limit(tmp_path):
    from alitool.io.video import VideoFrames

    path = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 5.0, (48, 40))
    for _ in range(3):
        writer.write(np.full((40, 48, 3), 90, np.uint8))
    writer.release()
    with pytest.raises(BadInput, match="video frame is 48x40"):
        list(VideoFrames(path, max_pixels=1000))
    assert len(list(VideoFrames(path))) == 3


def test_the_pixel_limit_of_an_encode_holds_for_its_videos(tmp_path):
    """``encode --max-megapixels`` reaches the video reader: the clip is skipped, the image beside it kept."""
    from alitool.contract.preprocess import Preprocess
    from alitool.encoding.decoding import Sample, decode_stream
    from alitool.io.sources import Skipped, expand_sources

    clip = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(clip), cv2.VideoWriter_fourcc(*"MJPG"), 5.0, (48, 40))
    for _ in range(3):
        writer.write(np.full((40, 48, 3), 90, np.uint8))
    writer.release()
    cv2.imwrite(str(tmp_path / "small.png"), np.zeros((20, 20), np.uint8))
    sources = [str(clip), str(tmp_path / "small.png")]
    limited = list(decode_stream(expand_sources(sources), Preprocess(8, 1, max_pixels=1000)))
    assert [type(item) for item in limited] == [Skipped, Sample]
    assert "video frame is 48x40" in limited[0].reason
    assert len(list(decode_stream(expand_sources(sources), Preprocess(8, 1)))) == 4  # 3 frames + the image


def test_nul_byte_and_binary_lines_in_a_path_list_are_skipped(tmp_path):
    from alitool.io.sources import ImageInput, Skipped, expand_sources

    cv2.imwrite(str(tmp_path / "a.png"), np.zeros((8, 8), np.uint8))
    listing = tmp_path / "list.txt"
    listing.write_bytes(b"a.png\nbad\x00name.png\n\xff\xfe\x00\x01binary\n" + b"x" * 70000 + b"\na.png\n")
    items = list(expand_sources([str(listing)]))
    assert [type(i) for i in items] == [ImageInput, Skipped, Skipped, Skipped, ImageInput]
    assert "NUL byte" in items[1].reason and items[1].source.endswith("list.txt:2")
    assert "over 65536 characters" in items[3].reason


# ---------------------------------------------------------------------------------------------------------
# Numbers: checked when parsed, one line, exit status 2.


@pytest.mark.parametrize("override, message", [
    ("train.lr=-1", "expected a number > 0"),
    ("train.lr=nan", "expected a finite number"),
    ("train.batch_size=0", "expected a number >= 1"),
    ("train.epochs=-1", "expected a number >= 1"),
    ("train.seed=123456789012345678901", "in [0, 4294967295]"),
    ("train.seed=-1", "in [0, 4294967295]"),
    ("train.ema=1", "in [0, 1)"),
    ("train.alice=-0.5", ">= 0"),
    ("model.latent_dim=0", "in [1, "),
    ("data.image_size=-8", "in [0, 8192]"),
    ("model.encoder=[[conv,3,1,8,true,1.5,lrelu]]", "dropout must be a number in [0, 1)"),
    ("train.batch_size=100000000", "GiB of memory"),
])
def test_config_numbers_are_range_checked(override, message):
    from alitool.config import load_config

    with pytest.raises(UserError, match=message.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")):
        load_config("digits", [override])


@pytest.mark.parametrize("args, says", [
    (["train", "digits", "--seed", "-1"], "--seed"),
    (["train", "digits", "--seed", "123456789012345678901"], "--seed"),
    (["train", "digits", "--batch-size", "-5"], "--batch-size"),
    (["train", "digits", "--epochs", "-1"], "--epochs"),
    (["train", "digits", "--max-steps", "-3"], "--max-steps"),
    (["train", "digits", "--set", "train.lr=nan"], "error: config key 'train.lr' is nan"),
    (["train", "digits", "--set", "train.batch_size=0"], "error: config key 'train.batch_size' is 0"),
    (["train", "digits", "--batch-size", "100000000"], "error: train.batch_size 100000000 would need"),
    (["encode", "x.png", "--out", "f.npy", "--max-megapixels", "nan"], "--max-megapixels"),
    (["encode", "x.png", "--out", "f.npy", "--max-megapixels", "inf"], "--max-megapixels"),
    (["encode", "x.png", "--out", "f.npy", "--max-megapixels", "0"], "--max-megapixels"),
    (["encode", "x.png", "--out", "f.npy", "--seed", "-1"], "--seed"),
    (["encode", "x.png", "--out", "f.npy", "--batch-size", "100000000"], "GiB of memory"),
    (["sample", "--out", "s.png", "--n", "1000000000"], "GiB of memory"),
    (["sample", "--out", "s.png", "--seed", "-1"], "--seed"),
    (["reconstruct", "x.png", "--out", "r.png", "--n", "1000000000"], "GiB of memory"),
    (["interpolate", "a.png", "b.png", "--out", "i.png", "--steps", "100000000"], "GiB of memory"),
])
def test_cli_numbers_fail_with_status_2(tmp_path, monkeypatch, args, says):
    monkeypatch.chdir(tmp_path)
    result = invoke_cli(*args, *(["--model", str(tmp_path / "absent.pt")] if args[0] != "train" else []))
    assert result.exit_code == 2, result.output
    assert isinstance(result.exception, SystemExit)
    assert "Traceback" not in result.output and not (tmp_path / "runs").exists()
    assert says in result.output, result.output
    lines = result.stderr.strip().splitlines()  # click's own refusals too: one line, not its usage block
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr


# ---------------------------------------------------------------------------------------------------------
# --resume keeps the networks and the data.


@pytest.mark.parametrize("override, key", [
    ("model.spectral_norm=true", "model.spectral_norm"),
    ("model.disc_unary=true", "model.disc_unary"),
    ("train.ema=0.999", "train.ema"),
    ("model.latent_dim=8", "model.latent_dim"),
    ("data.image_size=16", "data.image_size"),
])
def test_resume_refuses_a_different_architecture(tmp_path, override, key):
    from alitool.trainers.resume import run_config

    run, _ = make_run(tmp_path)
    with pytest.raises(UserError, match=f"keeps its networks and its data; {key}: the run has"):
        run_config("digits", [override], resume=run)
    cfg, folder = run_config(None, ["train.lr=3e-4"], {"epochs": 2}, resume=run)  # training settings may change
    assert folder == run and cfg.train.lr == 3e-4 and cfg.train.epochs == 2


def test_resume_refuses_another_dataset(tmp_path):
    from alitool.trainers.resume import run_config

    run, _ = make_run(tmp_path)
    with pytest.raises(UserError, match="data.name: the run has 'digits', mnist has 'mnist'"):
        run_config("mnist", resume=run)


# ---------------------------------------------------------------------------------------------------------
# Metadata read from a file is checked as user input is.


@pytest.mark.parametrize("change, message", [
    ({"image_size": "64"}, "image_size must be a whole number"),
    ({"image_size": -3}, "image_size must be a whole number"),
    ({"channels": 0}, "channels must be a whole number"),
    ({"value_range": [1.0, 0.0]}, "value_range must be two finite numbers"),
    ({"value_range": [0.0, float("nan")]}, "value_range must be two finite numbers"),
    ({"value_range": [-1.0, 1.0]}, "value_range is [-1.0, 1.0] but the training config's images are pixels in"),
    ({"y_dim": 2.5}, "y_dim must be a whole number"),
])
def test_edited_metadata_is_one_line_naming_the_file(change, message):
    from alitool.contract.meta import ModelMeta, meta_from_metadata
    from alitool.contract.names import META_KEY

    meta = ModelMeta("digits", 8, 1, 4, 4, config={"data": {"image_size": 8, "channels": 1}})
    values = {**json.loads(meta.to_json()), **change}
    with pytest.raises(UserError, match=f"^encoder.onnx: unreadable alitool metadata \\({re.escape(message)}"):
        meta_from_metadata({META_KEY: json.dumps(values)}, "encoder.onnx")
    assert meta_from_metadata({META_KEY: meta.to_json()}, "encoder.onnx") == meta


# ---------------------------------------------------------------------------------------------------------
# The index reads back with the docs' snippet, whatever the names.


def test_index_names_are_utf8_and_never_formulas(tmp_path, monkeypatch):
    model = save_tiny_model(tmp_path / "m.pt")
    folder = tmp_path / "in"
    folder.mkdir()
    image = cv2.imencode(".png", np.full((8, 8), 100, np.uint8))[1].tobytes()
    (folder / "=HYPERLINK(1).png").write_bytes(image)
    with open(os.path.join(os.fsencode(folder), b"caf\xe9.png"), "wb") as f:
        f.write(image)
    result = invoke_cli("encode", folder, "--out", tmp_path / "feats.npy", "--model", model, "--no-progress")
    assert result.exit_code == 0, result.output
    with open(tmp_path / "feats.index.csv", encoding="utf-8") as f:  # the reading snippet of docs/encode.md
        index = list(csv.DictReader(f))
    assert sorted(os.path.basename(row["source"]) for row in index) == ["=HYPERLINK(1).png", "caf%E9.png"]
    monkeypatch.chdir(folder)  # a name given as is, starting with "="
    result = invoke_cli("encode", "=HYPERLINK(1).png", "--out", tmp_path / "f2.npy", "--model", model,
                        "--no-progress")
    assert result.exit_code == 0, result.output
    with open(tmp_path / "f2.index.csv", encoding="utf-8") as f:
        assert [row["source"] for row in csv.DictReader(f)] == ["'=HYPERLINK(1).png"]


# ---------------------------------------------------------------------------------------------------------
# The whole command on every bad file at once, in a subprocess: one line each, bounded memory, no chatter.

# The child's own peak: VmHWM belongs to the address space exec made. ru_maxrss would not do: Linux carries it
# across fork and exec, so a child of a large pytest process reports the parent's size, and the bound below could
# never fail once pytest itself has grown past it.
PEAK_OF_THIS_PROCESS = """
def peak_rss_kb():
    try:
        with open("/proc/self/status") as status:
            return next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))
    except OSError:
        import resource
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
"""

PEAK_SCRIPT = PEAK_OF_THIS_PROCESS + """
import sys
from alitool.cli import main
try:
    main(sys.argv[1:], prog_name="alitool")
finally:
    print(f"PEAK_RSS_KB {peak_rss_kb()}", file=sys.stderr)
"""


def run_with_peak(*args, cwd) -> tuple[int, str, int]:
    """(exit status, stdout + stderr, peak resident memory in MB) of ``alitool ARGS`` in a fresh process."""
    import subprocess

    env = {**os.environ, "OMP_NUM_THREADS": "1", "ALITOOL_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-c", PEAK_SCRIPT, *map(str, args)], cwd=cwd, capture_output=True,
                          text=True, env=env, timeout=300)
    lines = proc.stderr.splitlines()
    peak = [int(line.split()[1]) for line in lines if line.startswith("PEAK_RSS_KB")]
    text = proc.stdout + "\n".join(line for line in lines if not line.startswith("PEAK_RSS_KB"))
    return proc.returncode, text, peak[0] // 1024 if peak else -1


@pytest.mark.slow
def test_encode_on_hostile_files_one_line_each_and_bounded_memory(tmp_path):
    model = save_tiny_model(tmp_path / "m.pt")
    folder = tmp_path / "in"
    folder.mkdir()
    cv2.imwrite(str(folder / "good.png"), np.full((8, 8), 50, np.uint8))
    bad = [radiance_hdr(folder / "hdr.png", 12000, 12000), jpeg_with_stray_byte(folder / "stray.jpg", 8000, 9000),
           random_jpeg(folder / "noise.jpg"), nan_tiff(folder / "nan.tiff")]
    (folder / "trunc.png").write_bytes(cv2.imencode(".png", np.zeros((64, 64), np.uint8))[1].tobytes()[:60])
    listing = tmp_path / "list.txt"
    listing.write_bytes(b"in/good.png\nin/bad\x00.png\n")
    code, output, _ = run_with_peak("encode", folder, listing, "--out", tmp_path / "f.npy", "--model", model,
                                    "--no-progress", cwd=tmp_path)
    assert code == 0, output
    assert "Traceback" not in output
    warnings = [line for line in output.splitlines() if line.startswith("warning:")]
    assert len(warnings) == len(bad) + 2, output  # + the truncated PNG and the NUL line
    informational = ("warning:", "note:", "model:", "model threads:")
    others = [line for line in output.splitlines() if line and not line.startswith(informational)]
    assert len(others) == 1, output  # the summary only: no libpng / libjpeg / OpenCV chatter
    assert "12000x12000 (144 Mpixel)" in output and "contains NaN" in output and "NUL byte" in output


BOMB_SCRIPT = PEAK_OF_THIS_PROCESS + """
import sys
from alitool.data.imagefiles import ImageSource, decode_all
print(decode_all(ImageSource("set.zip"), sys.argv[1:], 8, 1)[1].tolist())
print("PEAK_RSS_KB", peak_rss_kb())
"""


def bomb_peak(cwd: Path, *members: str) -> tuple[str, int]:
    import subprocess

    proc = subprocess.run([sys.executable, "-c", BOMB_SCRIPT, *members], cwd=cwd, capture_output=True, text=True,
                          timeout=300)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output
    return output, int(output.split("PEAK_RSS_KB")[1].split()[0]) // 1024


# What a refused input may add to the peak memory of the same command on one good input (the imports of torch and
# OpenCV alone are a few hundred MB, and vary with the installation).
EXTRA_MB = 150


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["hdr", "archive bomb"])
def test_peak_memory_of_the_hdr_and_the_bomb(tmp_path, kind):
    if kind == "hdr":
        model = save_tiny_model(tmp_path / "m.pt")
        cv2.imwrite(str(tmp_path / "good.png"), np.full((8, 8), 50, np.uint8))
        radiance_hdr(tmp_path / "photo.png", 12000, 12000)
        code, _, base = run_with_peak("encode", "good.png", "--out", "g.npy", "--model", model, "--no-progress",
                                      cwd=tmp_path)
        assert code == 0
        code, output, peak = run_with_peak("encode", "photo.png", "--out", "f.npy", "--model", model,
                                           "--no-progress", cwd=tmp_path)
        assert code == 2 and "over the 64 Mpixel limit" in output, output  # nothing else to encode: status 2
    else:
        zip_bomb(tmp_path / "set.zip", 400 << 20)  # under the 512 MiB file limit: the inflation ratio catches it
        _, base = bomb_peak(tmp_path, "good.png")
        output, peak = bomb_peak(tmp_path, "bomb.png", "good.png")
        assert "[1]" in output and "decompression bomb" in output, output
    print(f"peak memory for the {kind}: {peak} MB (the same command on a good input: {base} MB)")
    assert 0 < base and peak < base + EXTRA_MB, f"{kind}: {peak} MB against {base} MB"
    assert "Traceback" not in output
