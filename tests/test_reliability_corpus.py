"""The reliability corpus: every command, run as a user runs it (a subprocess), against bad inputs, bad numbers,
bad models, bad configs and bad output paths. For each attempt:

- no traceback, and the documented exit status (README, "Exit status": 0 done, 1 some inputs were skipped under
  --strict, 2 a user error, said in one ``error:`` line);
- nothing lost: the outputs a previous run left where the attempt writes are byte for byte the same after a
  failed attempt, and a successful attempt leaves a complete output (a .npy and its index of the same rows);
- nothing left behind: no temporary, backup, lock or journal file of ours anywhere in the workspace.

The test prints the corpus's counts (attempts, tracebacks, wrong exit statuses, outputs lost, temporaries left)
and fails on any non-zero one, listing every attempt that broke a rule, not just the first.
"""

from __future__ import annotations

import csv
import hashlib
import os
import re
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import pytest
from bad_inputs import jpeg_with_stray_byte, nan_tiff, pickled_checkpoint, radiance_hdr, random_jpeg
from helpers import digit_images, huge_png, make_run, save_tiny_model

pytestmark = pytest.mark.slow

OURS = re.compile(r"\..+\.(?:[0-9a-f]{8}\.(?:tmp|bak)(?:\.[A-Za-z0-9]+)?|lock|commit)")


@dataclass
class Attempt:
    """One command line. ``status``: the exit status it must end with. ``out``: the paths it writes (a previous
    run's output is put there first, from the workspace's ``previous/`` folder, when one of that name exists)."""
    name: str
    args: list
    status: int
    out: list[str] = field(default_factory=list)
    says: str = ""  # a phrase the error line (status 2) or the output must contain


def write_inputs(root: Path) -> None:
    """good/: six digit PNGs. bad/: two good digits among every kind of bad image. Plus lists, videos, models,
    configs and a run folder."""
    good, bad = root / "good", root / "bad"
    good.mkdir()
    bad.mkdir()
    for i, image in enumerate(digit_images(6)):
        cv2.imwrite(str(good / f"d{i}.png"), image)
    for i, image in enumerate(digit_images(8)[6:]):
        cv2.imwrite(str(bad / f"ok{i}.png"), image)
    radiance_hdr(bad / "hdr.png", 12000, 12000)  # 144 Mpixel behind a .png name
    jpeg_with_stray_byte(bad / "stray.jpg", 9000, 8000)  # 72 Mpixel, the header made hard to read
    random_jpeg(bad / "noise.jpg")
    nan_tiff(bad / "nan.tiff")
    huge_png(bad / "bomb.png", 30000)  # 900 Mpixel: a decompression bomb of a few hundred KB
    (bad / "empty.png").write_bytes(b"")
    (bad / "text.png").write_text("not an image\n")
    (bad / "truncated.png").write_bytes(cv2.imencode(".png", digit_images(1)[0])[1].tobytes()[:40])
    (bad / "folder.png").mkdir()
    (bad / "loop.png").symlink_to("loop.png")
    (bad / "dangling.jpg").symlink_to("nowhere.jpg")
    os.mkfifo(bad / "fifo.png")
    png = cv2.imencode(".png", digit_images(1)[0])[1].tobytes()
    (bad / os.fsdecode(b"caf\xe9.png")).write_bytes(png)  # a non-UTF-8 name (a good image)
    (bad / "=cmd()+1.png").write_bytes(png)  # a name a spreadsheet would run as a formula (a good image)

    (root / "list.txt").write_bytes(b"good/d0.png\ngood/bad\x00name.png\n\xff\xfe\x00\x01binary\nno/such.png\n"
                                    b"good/d1.png\n")
    (root / "notvideo.mp4").write_text("not a video\n")
    video = cv2.VideoWriter(str(root / "huge.avi"), cv2.VideoWriter_fourcc(*"MJPG"), 5, (9000, 8000))
    assert video.isOpened()
    video.write(np.zeros((8000, 9000, 3), np.uint8))  # 72 Mpixel frames, over the default limit
    video.release()

    models = root / "models"
    model = save_tiny_model(models / "model.pt")
    pickled_checkpoint(model, models / "pickled.pt")
    (models / "truncated.pt").write_bytes(model.read_bytes()[:300])
    (models / "random.onnx").write_bytes(np.random.default_rng(0).bytes(2000))
    (models / "notes.pt").write_text("hello\n")

    configs = root / "configs"
    configs.mkdir()
    (configs / "tag.yaml").write_text("name: x\ndata: !!python/object/apply:os.system ['echo owned']\n")
    laughs = "a: &a ['lol','lol','lol','lol','lol','lol','lol','lol','lol']\n"
    for level in "bcdefghi":
        prev = chr(ord(level) - 1)
        laughs += f"{level}: &{level} [*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev}]\n"
    (configs / "laughs.yaml").write_text(laughs)
    (configs / "binary.yaml").write_bytes(b"\x00\xff\xfe garbage")

    run, _ = make_run(root)  # runs/tiny: a digits checkpoint
    corrupt = root / "runs" / "corrupt"
    corrupt.mkdir()
    (corrupt / "checkpoint.pt").write_bytes((run / "checkpoint.pt").read_bytes()[:500])

    previous = root / "previous"  # what earlier runs left where the attempts write
    previous.mkdir()
    features = np.arange(12, dtype=np.float32).reshape(3, 4)
    np.save(previous / "f.npy", features)
    (previous / "f.index.csv").write_text("row,source\n0,a\n1,b\n2,c\n")
    cv2.imwrite(str(previous / "r.png"), np.full((4, 4), 7, np.uint8))
    (previous / "v.avi").write_bytes(b"an earlier video")


def corpus(root: Path) -> list[Attempt]:
    model = ["--model", root / "models" / "model.pt"]
    good = [root / "good" / "d0.png", root / "good" / "d1.png"]
    bad = root / "bad"
    run = root / "runs" / "tiny"
    attempts = [
        # encode: bad images are skipped with a warning; --strict makes that status 1
        Attempt("encode folder of bad images", ["encode", bad, *model, "--out", "f.npy"], 0, ["f.npy"]),
        Attempt("encode bad images --strict", ["encode", bad, *model, "--out", "f.npy", "--strict"], 1, ["f.npy"]),
        Attempt("encode path list with NUL and binary lines", ["encode", root / "list.txt", *model, "--out", "f.npy"],
                0, ["f.npy"]),
        Attempt("encode only an HDR over the limit", ["encode", bad / "hdr.png", *model, "--out", "f.npy"], 2,
                ["f.npy"], "nothing"),
        Attempt("encode only a decompression bomb", ["encode", bad / "bomb.png", *model, "--out", "f.npy"], 2,
                ["f.npy"]),
        Attempt("encode video frames over the limit", ["encode", root / "huge.avi", *model, "--out", "f.npy"], 2,
                ["f.npy"]),
        Attempt("encode a text file named .mp4", ["encode", root / "notvideo.mp4", *model, "--out", "f.npy"], 2,
                ["f.npy"]),
        Attempt("encode a missing path", ["encode", root / "no-such", *model, "--out", "f.npy"], 2, ["f.npy"]),
        Attempt("encode --out an existing folder", ["encode", *good, *model, "--out", "existing"], 2, ["existing"]),
        Attempt("encode --out without a name", ["encode", *good, *model, "--out", "o/.npy"], 2),
        Attempt("encode --out an input", ["encode", *good, *model, "--out", good[0]], 2),
        Attempt("encode --out whose index is a folder", ["encode", *good, *model, "--out", "f.npy"], 2,
                ["f.npy", "f.index.csv/"]),
        Attempt("encode a pickled checkpoint", ["encode", *good, "--model", root / "models" / "pickled.pt",
                                                 "--out", "f.npy"], 2, ["f.npy"], "pickled"),
        Attempt("encode a truncated checkpoint", ["encode", *good, "--model", root / "models" / "truncated.pt",
                                                   "--out", "f.npy"], 2, ["f.npy"]),
        Attempt("encode a text file named .pt", ["encode", *good, "--model", root / "models" / "notes.pt",
                                                  "--out", "f.npy"], 2, ["f.npy"]),
        Attempt("encode random bytes named .onnx", ["encode", *good, "--model", root / "models" / "random.onnx",
                                                     "--out", "f.npy"], 2, ["f.npy"]),
        Attempt("encode --batch-size 0", ["encode", *good, *model, "--out", "f.npy", "--batch-size", "0"], 2),
        Attempt("encode --batch-size -5", ["encode", *good, *model, "--out", "f.npy", "--batch-size", "-5"], 2),
        Attempt("encode --batch-size 1e8", ["encode", *good, *model, "--out", "f.npy", "--batch-size", "100000000"],
                2),
        Attempt("encode --max-megapixels nan", ["encode", *good, *model, "--out", "f.npy", "--max-megapixels",
                                                 "nan"], 2),
        Attempt("encode --seed -1", ["encode", *good, *model, "--out", "f.npy", "--features", "z", "--seed", "-1"],
                2),
        Attempt("encode --device cuda without CUDA", ["encode", *good, *model, "--out", "f.npy", "--device", "cuda"],
                2, ["f.npy"], "CUDA"),
        # reconstruct, sample, interpolate
        Attempt("reconstruct folder of bad images", ["reconstruct", bad, *model, "--out", "r.png"], 0, ["r.png"]),
        Attempt("reconstruct only a bomb", ["reconstruct", bad / "bomb.png", *model, "--out", "r.png"], 2, ["r.png"]),
        Attempt("reconstruct --out an existing folder", ["reconstruct", *good, *model, "--out", "existing"], 2,
                ["existing"]),
        Attempt("reconstruct --n 1e9", ["reconstruct", *good, *model, "--out", "r.png", "--n", "1000000000"], 2),
        Attempt("reconstruct a video over the limit", ["reconstruct", root / "huge.avi", *model, "--out", "v.avi"],
                2, ["v.avi"]),
        Attempt("sample --n 1e9", ["sample", *model, "--out", "r.png", "--n", "1000000000"], 2, ["r.png"]),
        Attempt("sample --n 0", ["sample", *model, "--out", "r.png", "--n", "0"], 2, ["r.png"]),
        Attempt("sample --seed of 20 digits", ["sample", *model, "--out", "r.png", "--seed", "9" * 20], 2, ["r.png"]),
        Attempt("sample --out .npy", ["sample", *model, "--out", "r.npy"], 2),
        Attempt("interpolate to an HDR over the limit", ["interpolate", good[0], bad / "hdr.png", *model,
                                                         "--out", "r.png"], 2, ["r.png"]),
        Attempt("interpolate a folder", ["interpolate", good[0], root / "good", *model, "--out", "r.png"], 2,
                ["r.png"], "folder"),
        Attempt("interpolate an odd number of endpoints", ["interpolate", *good, good[0], *model, "--out", "r.png"],
                2, ["r.png"]),
        Attempt("interpolate --steps 1e8", ["interpolate", *good, *model, "--out", "r.png", "--steps", "100000000"],
                2, ["r.png"]),
        # export
        Attempt("export a corrupt checkpoint", ["export", root / "runs" / "corrupt", "--out", "x"], 2),
        Attempt("export a missing run", ["export", root / "runs" / "missing", "--out", "x"], 2),
        Attempt("export --out a file", ["export", run, "--out", "f.npy"], 2, ["f.npy"]),
        # train
        Attempt("train --set train.lr=nan", ["train", "digits", "--set", "train.lr=nan", "--out", "t"], 2),
        Attempt("train --set train.batch_size=0", ["train", "digits", "--set", "train.batch_size=0", "--out", "t"],
                2),
        Attempt("train --epochs -1", ["train", "digits", "--epochs", "-1", "--out", "t"], 2),
        Attempt("train a config with a python tag", ["train", root / "configs" / "tag.yaml", "--out", "t"], 2),
        Attempt("train a billion-laughs config", ["train", root / "configs" / "laughs.yaml", "--out", "t"], 2),
        Attempt("train a binary config", ["train", root / "configs" / "binary.yaml", "--out", "t"], 2),
        Attempt("train --out a file", ["train", "digits", "--max-steps", "1", "--out", "f.npy"], 2, ["f.npy"]),
        Attempt("train --resume with another architecture", ["train", "--resume", run, "--set",
                                                              "model.spectral_norm=true"], 2),
        Attempt("train mnist --resume a digits run", ["train", "mnist", "--resume", run], 2, [], "data.name"),
        Attempt("train a folder of bad images", ["train", "folder", "--data-dir", bad, "--max-steps", "1",
                                                  "--set", "train.batch_size=2", "--out", "t"], 0),
        Attempt("train a folder of only bad images", ["train", "folder", "--data-dir", root / "only-bad",
                                                       "--max-steps", "1", "--out", "t"], 2),
        # eval
        Attempt("eval svm on a corrupt run", ["eval", "svm", root / "runs" / "corrupt"], 2),
    ]
    return attempts


def digest(path: Path) -> str:
    if path.is_dir():
        return "folder:" + ",".join(sorted(p.name for p in path.iterdir()))
    return hashlib.sha256(path.read_bytes()).hexdigest()


def prepare(root: Path, i: int, attempt: Attempt) -> tuple[Path, dict[str, str]]:
    """The attempt's own working folder, holding the previous outputs it could overwrite; their digests."""
    cwd = root / "work" / f"{i:02d}"
    cwd.mkdir(parents=True)
    (cwd / "existing").mkdir()
    (cwd / "existing" / "keep.txt").write_text("keep")
    for name in sorted(attempt.out, key=lambda n: not n.endswith("/")):  # folders first
        if name.endswith("/"):
            (cwd / name).mkdir()
        elif (root / "previous" / name).exists():
            shutil.copy2(root / "previous" / name, cwd / name)
            index = cwd / Path(name).with_suffix(".index.csv").name
            if name.endswith(".npy") and not index.exists():
                shutil.copy2(root / "previous" / "f.index.csv", index)
    return cwd, {name: digest(cwd / name) for name in os.listdir(cwd)}


def run_attempt(root: Path, i: int, attempt: Attempt) -> tuple[Attempt, subprocess.CompletedProcess, Path, dict]:
    cwd, before = prepare(root, i, attempt)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "ALITOOL_OFFLINE": "1", "PYTHONWARNINGS": "default"}
    proc = subprocess.run([sys.executable, "-m", "alitool.cli", *map(str, attempt.args)], cwd=cwd, env=env,
                          capture_output=True, text=True, errors="replace", timeout=600)
    return attempt, proc, cwd, before


def complete_features(npy: Path) -> bool:
    """A .npy that loads, beside an index with one row per feature row."""
    try:
        rows = np.load(npy).shape[0]
        with open(npy.with_suffix(".index.csv"), encoding="utf-8", newline="") as f:
            return rows == sum(1 for _ in csv.DictReader(f))
    except (OSError, ValueError):
        return False


def problems_of(attempt: Attempt, proc: subprocess.CompletedProcess, cwd: Path, before: dict) -> dict[str, str]:
    """The rules this attempt broke: {rule: detail}."""
    text = proc.stdout + proc.stderr
    found = {}
    if "Traceback" in text:
        found["traceback"] = text[text.index("Traceback"):][-600:]
    if proc.returncode != attempt.status:
        found["status"] = f"exit status {proc.returncode}, expected {attempt.status}: {text[-400:]}"
    if attempt.status == 2:
        errors = [line for line in proc.stderr.splitlines() if line and not line.startswith("warning:")]
        if len(errors) != 1 or not errors[0].startswith("error: "):
            found["one line"] = proc.stderr[-400:]
    if attempt.says and attempt.says not in text:
        found["message"] = f"expected {attempt.says!r} in: {text[-300:]}"
    written = {*attempt.out, *(Path(n).with_suffix(".index.csv").name for n in attempt.out if n.endswith(".npy"))}
    for name, old in before.items():
        path = cwd / name
        if proc.returncode in (0, 1) and name in written:  # done (with --strict: done, and some inputs skipped)
            if name.endswith(".npy") and not complete_features(path):
                found["lost"] = f"{name}: not a complete .npy + index after the attempt"
            continue
        if not path.exists() or digest(path) != old:
            found["lost"] = f"{name}: changed by an attempt that failed"
    return found


def test_reliability_corpus(tmp_path):
    write_inputs(tmp_path)
    (tmp_path / "only-bad").mkdir()
    for name in ("hdr.png", "noise.jpg", "text.png", "empty.png"):
        shutil.copy2(tmp_path / "bad" / name, tmp_path / "only-bad" / name)
    attempts = corpus(tmp_path)
    with ThreadPoolExecutor(max_workers=2) as pool:  # each attempt in its own folder: independent
        results = list(pool.map(lambda job: run_attempt(tmp_path, *job), enumerate(attempts)))
    broken = {}
    for attempt, proc, cwd, before in results:
        problems = problems_of(attempt, proc, cwd, before)
        if problems:
            broken[attempt.name] = problems
    left = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob(".*") if OURS.fullmatch(p.name))
    counts = {rule: sum(rule in p for p in broken.values()) for rule in ("traceback", "status", "one line", "lost")}
    print(f"\nreliability corpus: {len(attempts)} attempts, {counts['traceback']} tracebacks, "
          f"{counts['status']} wrong exit statuses, {counts['one line']} errors not on one line, "
          f"{counts['lost']} outputs lost, {len(left)} temporaries left")
    assert not broken and not left, "\n".join(
        [f"{name}: {problems}" for name, problems in broken.items()] + [f"left behind: {p}" for p in left])
