"""`alitool encode | reconstruct | interpolate | sample` end to end through click, on real files and a real
tiny model: every kind of bad input (make_bad_inputs) gives one warning line, is skipped, and is counted;
pictures have the paper's layout; model files that are not models give one error line."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap

import cv2
import numpy as np
import pytest
from helpers import digit_images, huge_png, invoke_cli, read_index, rgb_image, save_tiny_model, write_digit_files

from alitool.backends import load_backend
from alitool.viz import CAPTION_HEIGHT

CELL, PAD = 32, 2  # viz.make_grid enlarges 8x8 images to 32x32 cells with a 2-pixel border


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return save_tiny_model(tmp_path_factory.mktemp("model") / "checkpoint.pt")


run = invoke_cli  # `alitool ARGS` through click's test runner


def cell(grid: np.ndarray, row: int, col: int, above: int = 0) -> np.ndarray:
    """Cell (row, col) of a make_grid picture that starts ``above`` pixels down (below a caption strip)."""
    top, left = above + PAD + row * (CELL + PAD), PAD + col * (CELL + PAD)
    return grid[top : top + CELL, left : left + CELL, 0].astype(int)


def big(image_01: np.ndarray) -> np.ndarray:
    """An 8x8 image in [0, 1] as make_grid draws it: uint8, enlarged 4x (nearest neighbour)."""
    tile = (np.clip(image_01, 0, 1) * 255 + 0.5).astype(np.uint8)
    return tile.repeat(4, axis=0).repeat(4, axis=1).astype(int)


def make_bad_inputs(folder):
    """Every kind of bad input encode must survive, as a real file next to good ones; returns (good, bad) names."""
    folder.mkdir()
    digits = digit_images(3)
    good = ["d0.png", "ünïcødé 名前 with spaces.png", "d2.jpg"]
    for name, image in zip(good, digits, strict=True):
        (folder / name).write_bytes(cv2.imencode(os.path.splitext(name)[1], image)[1].tobytes())
    from PIL import Image

    cv2.imwrite(str(folder / "gray.png"), digits[0])
    cv2.imwrite(str(folder / "rgba.png"), np.dstack([rgb_image(8, 8)] + [np.full((8, 8), 9, np.uint8)]))
    cv2.imwrite(str(folder / "deep16.png"), digits[1].astype(np.uint16) * 257)
    Image.fromarray(rgb_image(16, 16)).convert("CMYK").save(folder / "cmyk.jpg")
    good += ["gray.png", "rgba.png", "deep16.png", "cmyk.jpg"]
    jpeg = cv2.imencode(".jpg", rgb_image())[1].tobytes()
    png = cv2.imencode(".png", rgb_image())[1].tobytes()
    (folder / "zero.png").write_bytes(b"")
    (folder / "trunc.jpg").write_bytes(jpeg[: len(jpeg) // 2])
    (folder / "trunc.png").write_bytes(png[: len(png) // 2])
    (folder / "text.jpg").write_text("not an image")
    (folder / "table.xyz").write_text("1,2,3")
    huge_png(folder / "huge.png", 20000)
    os.symlink("loop_b.png", folder / "loop_a.png")
    os.symlink("loop_a.png", folder / "loop_b.png")
    (folder / "sub").mkdir()
    os.symlink("..", folder / "sub" / "cycle")
    (folder / "corrupt.mp4").write_bytes(os.urandom(3000))
    cv2.VideoWriter(str(folder / "noframes.avi"), cv2.VideoWriter_fourcc(*"MJPG"), 10, (16, 16)).release()
    os.mkfifo(folder / "fifo.png")
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(folder / "socket.jpg"))
    sock.close()
    bad = ["zero.png", "trunc.jpg", "trunc.png", "text.jpg", "table.xyz", "huge.png", "loop_a.png", "loop_b.png",
           "cycle", "corrupt.mp4", "noframes.avi", "fifo.png", "socket.jpg"]
    return good, bad


def test_encode_skips_each_bad_input_with_one_warning_line(tmp_path, model):
    good, bad = make_bad_inputs(tmp_path / "in")
    (tmp_path / "empty").mkdir()
    out = tmp_path / "feats.npy"
    sources = [tmp_path / "in", tmp_path / "empty", tmp_path / "missing.png"]
    result = run("encode", *sources, "--out", out, "--model", model, "--batch-size", 4)
    assert result.exit_code == 0, result.output
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
    notes = [line for line in result.stderr.splitlines() if line.startswith("note:")]  # the default --features
    assert len(notes) == 1 and len(warnings) == len(bad) + 2 == len(result.stderr.splitlines()) - 1  # "model:": stdout
    for name in [*bad, "empty", "missing.png"]:
        assert sum(f"{os.sep}{name}: skipped: " in w for w in warnings) == 1, name
    assert "Traceback" not in result.output
    assert f"skipped {len(bad) + 2} inputs" in result.stdout
    feats, index = np.load(out), read_index(tmp_path / "feats.index.csv")
    assert feats.shape == (len(good), 4) and len(index) == len(good)
    assert sorted(os.path.basename(r["source"]) for r in index) == sorted(good)

    strict = run("encode", *sources, "--out", tmp_path / "strict.npy", "--model", model, "--strict")
    assert strict.exit_code == 1
    assert "--strict" in strict.stderr
    np.testing.assert_allclose(np.load(tmp_path / "strict.npy"), feats, rtol=1e-4, atol=1e-6)  # rows written


def test_unreadable_file_as_root_without_dac_override(tmp_path):
    """chmod 000 does not stop root, whose CAP_DAC_OVERRIDE bypasses file modes: drop that capability in a
    child process (it stays root otherwise), so the kernel really refuses the read."""
    secret = tmp_path / "secret.png"
    cv2.imwrite(str(secret), rgb_image())
    cv2.imwrite(str(tmp_path / "fine.png"), rgb_image())
    secret.chmod(0)
    script = textwrap.dedent(f"""
        import ctypes, os, sys
        if os.geteuid() == 0:  # drop CAP_DAC_OVERRIDE (1) and CAP_DAC_READ_SEARCH (2) from this process
            class Header(ctypes.Structure):
                _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]
            class Data(ctypes.Structure):
                _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32),
                            ("inheritable", ctypes.c_uint32)]
            libc = ctypes.CDLL(None, use_errno=True)
            header, data = Header(0x20080522, 0), (Data * 2)()
            assert libc.capget(ctypes.byref(header), data) == 0
            for field in ("effective", "permitted", "inheritable"):
                setattr(data[0], field, getattr(data[0], field) & ~0b110)
            assert libc.capset(ctypes.byref(header), data) == 0, ctypes.get_errno()
        try:
            open({str(secret)!r}, "rb").close()
            print("STILL-READABLE")
            sys.exit(0)
        except PermissionError:
            pass
        from alitool.contract.preprocess import Preprocess
        from alitool.io.sources import expand_sources
        from alitool.encoding.batching import batches
        from alitool.encoding.decoding import decode_stream
        from alitool.encoding.report import RunReport
        pre = Preprocess(8, 1)
        report = RunReport(warn=print)
        rows = sum(b.count for b in batches(decode_stream(expand_sources([{str(tmp_path)!r}]), pre), pre, 4,
                                            on_skip=report.on_skip))
        print("ROWS", rows)
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    if "STILL-READABLE" in done.stdout:
        pytest.skip("this sandbox lets the process read mode-000 files even without DAC capabilities")
    assert done.stdout.splitlines() == [f"warning: {secret}: skipped: permission denied", "ROWS 1"]


def test_model_files_that_are_not_models(tmp_path):
    garbage = tmp_path / "model.pt"
    garbage.write_bytes(os.urandom(2048))
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    fake_onnx = tmp_path / "encoder.onnx"
    fake_onnx.write_bytes(b"definitely not protobuf" * 10)
    (tmp_path / "run").mkdir()
    cv2.imwrite(str(tmp_path / "x.png"), digit_images(1)[0])
    for bad, expected in ((garbage, "model.pt"), (text, "not a model file alitool knows"),
                          (tmp_path / "run", "no checkpoint there"), (fake_onnx, "encoder.onnx"),
                          (tmp_path / "absent.pt", "no such model file")):
        result = run("encode", tmp_path / "x.png", "--out", tmp_path / "f.npy", "--model", bad)
        assert result.exit_code == 2, (bad, result.output)
        assert result.stderr.startswith("error: ") and len(result.stderr.splitlines()) == 1, result.stderr
        assert expected in result.stderr and str(bad) in result.stderr
    assert not (tmp_path / "f.npy").exists()


def test_reconstruct_grid_has_originals_and_reconstructions_in_alternating_columns(tmp_path, model):
    paths, _ = write_digit_files(tmp_path / "d", 5)
    result = run("reconstruct", tmp_path / "d", "--out", tmp_path / "recon.png", "--model", model)
    assert result.exit_code == 0, result.output
    grid = cv2.imread(str(tmp_path / "recon.png"))
    assert grid.shape == (CAPTION_HEIGHT + PAD + CELL + PAD, PAD + 10 * (CELL + PAD), 3)  # caption strip on top
    backend = load_backend(model, device="cpu")
    x = digit_images(5)[:, None].astype(np.float32) / 255
    recon = backend.decode(backend.encode(x))
    for i in range(5):
        assert np.abs(cell(grid, 0, 2 * i, CAPTION_HEIGHT) - big(x[i, 0])).max() <= 1
        assert np.abs(cell(grid, 0, 2 * i + 1, CAPTION_HEIGHT) - big(recon[i, 0])).max() <= 1
    assert "posterior mean" in result.output


def test_reconstruct_video_is_side_by_side_at_the_strided_rate(tmp_path, model):
    _, video = write_digit_files(tmp_path / "d", 10)
    out = tmp_path / "recon.avi"
    result = run("reconstruct", video, "--out", out, "--model", model, "--stride", 2)
    assert result.exit_code == 0, result.output
    cap = cv2.VideoCapture(str(out))
    frames = []
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        frames.append(frame)
    assert len(frames) == 5 and cap.get(cv2.CAP_PROP_FPS) == pytest.approx(5.0)
    height, width = frames[0].shape[:2]
    assert width > 1.8 * height  # original | reconstruction
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary file left


def _pairs(path, n: int) -> tuple[np.ndarray, np.ndarray]:
    """(originals, reconstructions) cells of a captioned reconstruction grid of ``n`` pairs in one row."""
    grid = cv2.imread(str(path))
    assert grid is not None and grid.shape[0] == CAPTION_HEIGHT + PAD + CELL + PAD, path
    caption = grid[:CAPTION_HEIGHT]
    assert (caption < 100).any()  # there is text in the strip
    return (np.stack([cell(grid, 0, 2 * i, CAPTION_HEIGHT) for i in range(n)]),
            np.stack([cell(grid, 0, 2 * i + 1, CAPTION_HEIGHT) for i in range(n)]))


def test_reconstruct_posterior_sample_differs_from_the_mean_and_repeats_under_a_seed(tmp_path, model):
    write_digit_files(tmp_path / "d", 5)
    runs = {"mean": ["--posterior", "mean"], "a": ["--posterior", "sample", "--seed", 1],
            "b": ["--posterior", "sample", "--seed", 1], "c": ["--posterior", "sample", "--seed", 2]}
    cells = {}
    for name, args in runs.items():
        result = run("reconstruct", tmp_path / "d", "--out", tmp_path / f"{name}.png", "--model", model,
                     "--batch-size", 5, *args)
        assert result.exit_code == 0, result.output
        cells[name] = _pairs(tmp_path / f"{name}.png", 5)
    assert "posterior sample" in result.output and "seed 2" in result.output
    originals, mean = cells["mean"]
    assert all(np.array_equal(originals, cells[k][0]) for k in "abc")
    assert np.array_equal(cells["a"][1], cells["b"][1])  # --seed: the same draws
    assert np.abs(cells["a"][1] - mean).max() > 8 and np.abs(cells["a"][1] - cells["c"][1]).max() > 8
    # the draw is the backend's own z ~ q(z|x) (encode --features z), seeded as encode seeds it
    import torch

    backend = load_backend(model, device="cpu")
    x = digit_images(5)[:, None].astype(np.float32) / 255
    torch.manual_seed(1)
    drawn = backend.decode(backend.encode(x, kind="z"))
    for i in range(5):
        assert np.abs(cells["a"][1][i] - big(drawn[i, 0])).max() <= 1


def test_reconstruct_with_a_deterministic_encoder_is_the_same_for_mean_and_sample(tmp_path):
    import torch
    from helpers import TINY_RANDOM_INIT

    from alitool.checkpoint import save_checkpoint
    from alitool.config import load_config
    from alitool.models import ALI

    cfg = load_config("digits", [*TINY_RANDOM_INIT, "model.encoder_output=deterministic",
                                 "model.encoder=[[conv,3,1,8,true,0.0,lrelu],[conv,3,1,8,true,0.0,lrelu],"
                                 "[conv,4,1,16,true,0.0,lrelu],[conv,1,1,4,false,0.0,linear]]"])
    torch.manual_seed(0)
    ali = ALI(cfg).eval()
    save_checkpoint(tmp_path / "bigan.pt", cfg=cfg, models={"encoder": ali.encoder, "decoder": ali.decoder})
    write_digit_files(tmp_path / "d", 4)
    for name, args in (("mean", []), ("sample", ["--posterior", "sample", "--seed", 3])):
        result = run("reconstruct", tmp_path / "d", "--out", tmp_path / f"{name}.png", "--model",
                     tmp_path / "bigan.pt", *args)
        assert result.exit_code == 0, result.output
    assert np.array_equal(_pairs(tmp_path / "mean.png", 4)[1], _pairs(tmp_path / "sample.png", 4)[1])


def test_reconstruct_sample_of_a_deterministic_encoder_says_there_is_nothing_to_sample(tmp_path):
    """BiGAN's deterministic encoder has no q(z|x) to draw from: --posterior sample decodes E(x), and the caption
    must not call that a sample."""
    bigan = save_tiny_model(tmp_path / "bigan.pt", overrides=(
        "model.encoder_output=deterministic",
        "model.encoder=[[conv,3,1,8,true,0.0,lrelu],[conv,3,1,8,true,0.0,lrelu],[conv,4,1,16,true,0.0,lrelu],"
        "[conv,1,1,4,false,0.0,linear]]"))
    write_digit_files(tmp_path / "d", 3)
    out = {}
    for posterior in ("mean", "sample"):
        result = run("reconstruct", tmp_path / "d", "--out", tmp_path / f"{posterior}.png", "--model", bigan,
                     "--posterior", posterior)
        assert result.exit_code == 0, result.output
        out[posterior] = result.output
    assert "deterministic encoder, nothing to sample" in out["sample"] and "posterior sample" not in out["sample"]
    assert np.array_equal(_pairs(tmp_path / "mean.png", 3)[1], _pairs(tmp_path / "sample.png", 3)[1])


def test_reconstruct_caption_follows_what_the_backend_draws_for_an_encoder_with_noise_inputs(tmp_path):
    """An MLP image encoder with noise inputs (section 4.5's kind) is "deterministic" in its config, yet the torch
    backend's posterior sample draws its noise; its ONNX export computes G_z(x, 0). The caption says which."""
    model = save_tiny_model(tmp_path / "noisy.pt", overrides=(
        "model.encoder_output=deterministic", "model.encoder_noise_dim=2",
        "model.encoder=[[linear,1,1,16,true,0.0,relu],[linear,1,1,4,false,0.0,linear]]"))
    write_digit_files(tmp_path / "d", 3)
    captions = {}
    for backend, source, seed in (("torch", model, 1), ("torch-2", model, 2), ("onnx", tmp_path / "export", 1)):
        if backend == "onnx":
            exported = run("export", model, "--out", tmp_path / "export")
            assert exported.exit_code == 0, exported.output
        result = run("reconstruct", tmp_path / "d", "--out", tmp_path / f"{backend}.png", "--model", source,
                     "--posterior", "sample", "--seed", seed)
        assert result.exit_code == 0, result.output
        captions[backend] = result.output
    assert "posterior sample" in captions["torch"] and "nothing to sample" not in captions["torch"]
    assert not np.array_equal(_pairs(tmp_path / "torch.png", 3)[1], _pairs(tmp_path / "torch-2.png", 3)[1])
    assert "deterministic encoder, nothing to sample" in captions["onnx"]


def test_reconstruct_help_names_the_default_posterior_and_why():
    result = run("reconstruct", "--help")
    text = " ".join(result.output.split())
    assert result.exit_code == 0
    assert "--posterior [mean|sample]" in text and "[default: mean]" in text
    assert "deterministic" in text and "paper's figures 2-5" in text and "--seed" in text


def test_reconstruct_refuses_a_seed_without_sampling_and_samples_of_a_dataset(tmp_path, model):
    cv2.imwrite(str(tmp_path / "x.png"), digit_images(1)[0])
    seed_alone = run("reconstruct", tmp_path / "x.png", "--seed", 1, "--out", tmp_path / "r.png", "--model", model)
    assert seed_alone.exit_code == 2 and "--posterior sample" in seed_alone.stderr
    dataset = run("reconstruct", "--dataset", "test", "--posterior", "sample", "--out", tmp_path / "r.png",
                  "--model", model)
    assert dataset.exit_code == 2 and "posterior mean only" in dataset.stderr
    assert not (tmp_path / "r.png").exists()


def test_training_reconstruction_figure_shows_the_mean_and_a_fixed_posterior_sample(tmp_path, tiny_cfg):
    """trainers/loop.py's figure: a captioned mean panel over a captioned sample panel, whose eps is the same
    every epoch and leaves the training's random stream alone; a deterministic encoder gets the mean alone."""
    import torch
    from helpers import small_train_set

    from alitool.config import with_train
    from alitool.trainers.loop import Trainer

    trainer = Trainer(with_train(tiny_cfg, epochs=1), tmp_path / "run", train_data=small_train_set(tiny_cfg, 64),
                      log=lambda msg: None)
    trainer.start_fresh()
    with torch.no_grad():  # weights far from the N(0, 0.01) init, whose decoder draws the mean image for any z
        for p in trainer.game.model.parameters():
            p.normal_(0.0, 0.6)
    state = torch.get_rng_state()
    trainer.write_figures("001")
    trainer.write_figures("002")
    assert torch.equal(torch.get_rng_state(), state)
    first, second = (cv2.imread(str(tmp_path / "run" / "reconstructions" / f"epoch_{e}.png")) for e in ("001", "002"))
    panel = CAPTION_HEIGHT + PAD + CELL + PAD
    assert first.shape == (2 * panel, PAD + 16 * (CELL + PAD), 3) and np.array_equal(first, second)
    trainer.game.train(False)  # as write_figures draws: batch norm on its running statistics
    mean = trainer.game.reconstruct(trainer.fixed_x).numpy()
    shown = [cell(first, 0, 2 * i + 1, CAPTION_HEIGHT) for i in range(8)]
    drawn = [cell(first, 0, 2 * i + 1, panel + CAPTION_HEIGHT) for i in range(8)]
    assert all(np.abs(shown[i] - big(mean[i, 0])).max() <= 1 for i in range(8))
    assert max(np.abs(d - s).max() for d, s in zip(drawn, shown, strict=True)) > 8
    assert np.array_equal(cell(first, 0, 0, CAPTION_HEIGHT), cell(first, 0, 0, panel + CAPTION_HEIGHT))  # same x

    deterministic = with_train(tiny_cfg, epochs=1)
    from dataclasses import replace

    deterministic = replace(deterministic, model=replace(
        deterministic.model, encoder_output="deterministic",
        encoder=(*deterministic.model.encoder[:-1], replace(deterministic.model.encoder[-1], channels=4))))
    trainer = Trainer(deterministic, tmp_path / "bigan", train_data=small_train_set(tiny_cfg, 64),
                      log=lambda msg: None)
    trainer.start_fresh()
    trainer.write_figures("001")
    assert cv2.imread(str(tmp_path / "bigan" / "reconstructions" / "epoch_001.png")).shape[0] == panel


def test_interpolate_puts_originals_at_both_ends(tmp_path, model):
    paths, video = write_digit_files(tmp_path / "d", 4)
    out = tmp_path / "interp.png"
    result = run("interpolate", paths[0], f"{video}@3", paths[1], paths[2], "--steps", 5, "--out", out,
                 "--model", model)
    assert result.exit_code == 0, result.output
    grid = cv2.imread(str(out))
    assert grid.shape == (PAD + 2 * (CELL + PAD), PAD + 7 * (CELL + PAD), 3)
    x = digit_images(4)[:, None].astype(np.float32) / 255
    backend = load_backend(model, device="cpu")
    assert np.abs(cell(grid, 0, 0) - big(x[0, 0])).max() <= 1
    assert np.abs(cell(grid, 0, 6) - big(x[3, 0])).max() <= 1  # frame 3 of the video = digit 3
    assert np.abs(cell(grid, 1, 6) - big(x[2, 0])).max() <= 1
    assert np.abs(cell(grid, 0, 1) - big(backend.decode(backend.encode(x[:1]))[0, 0])).max() <= 1

    odd = run("interpolate", paths[0], "--out", out, "--model", model)
    assert odd.exit_code == 2 and "pairs" in odd.stderr
    missing = run("interpolate", paths[0], tmp_path / "nope.png", "--out", out, "--model", model)
    errors = [line for line in missing.stderr.splitlines() if line.startswith("error:")]
    assert missing.exit_code == 2 and len(errors) == 1 and "nope.png: no such file" in errors[0]
    past_end = run("interpolate", paths[0], f"{video}@99", "--out", out, "--model", model)
    assert past_end.exit_code == 2 and "no frame 99" in past_end.stderr


def test_sample_is_seeded(tmp_path, model):
    outs = {}
    for name, seed in (("a", 1), ("b", 1), ("c", 2)):
        result = run("sample", "--n", 10, "--seed", seed, "--out", tmp_path / f"{name}.png", "--model", model)
        assert result.exit_code == 0, result.output
        outs[name] = cv2.imread(str(tmp_path / f"{name}.png"))
    assert outs["a"].shape == (PAD + 3 * (CELL + PAD), PAD + 4 * (CELL + PAD), 3)  # ceil(sqrt(10)) columns
    assert np.array_equal(outs["a"], outs["b"]) and not np.array_equal(outs["a"], outs["c"])
    bad = run("sample", "--out", tmp_path / "s.jpg", "--model", model)
    assert bad.exit_code == 2 and ".png" in bad.stderr


def test_default_model_is_the_newest_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cv2.imwrite("x.png", digit_images(1)[0])
    nothing = run("encode", "x.png", "--out", "f.npy")
    assert nothing.exit_code == 2 and "no run with a checkpoint.pt under runs" in nothing.stderr
    (tmp_path / "runs" / "old").mkdir(parents=True)
    (tmp_path / "runs" / "new").mkdir()
    save_tiny_model(tmp_path / "runs" / "new" / "checkpoint.pt", seed=1)
    save_tiny_model(tmp_path / "runs" / "old" / "checkpoint.pt", seed=2)
    os.utime(tmp_path / "runs" / "old" / "checkpoint.pt", (1e9, 1e9))
    result = run("encode", "x.png", "--out", "f.npy")
    assert result.exit_code == 0, result.output
    assert f"model: {os.path.join('runs', 'new')} " in result.stdout


@pytest.mark.parametrize("command", ["encode", "reconstruct", "interpolate", "sample"])
def test_help_has_an_example(command):
    result = run(command, "--help")
    assert result.exit_code == 0 and "Example" in result.output and "--model" in result.output
