"""Which way each convolution of a training step runs, chosen by timing the ways on the running machine (as
cuDNN's benchmark mode does on a GPU), and remembered on disk.

A plain convolution of the paper's tables (no padding, dilation or groups; Appendix A, tables 3-6) can run three
ways on the CPU, with the same parameters and the same result up to rounding:

- ``onednn``: torch's own ``F.conv2d`` / ``F.conv_transpose2d`` (oneDNN), the safe default;
- ``relayout``: the same, on a copy of the input and weight in the other memory order (NCHW <-> NHWC), the output
  copied back: oneDNN's kernels for the two orders differ, and the model's order is the model's to choose;
- ``products``: one im2col matrix product (alitool/conv_gemm.py).

Which is fastest depends on the CPU (AVX2, AVX-512, AMX), the dtype and the shape, so no fixed rule holds
everywhere: the rule ``conv_gemm.pays_off`` was measured on one AMX machine in bf16. ``train.conv_path`` says
which way the layers of alitool/layers.py take during the training step's forward pass:

- ``auto``: the first time a layer shape is seen (the key below), time forward + backward of each way on that
  layer's own input and weight, a warm-up and a few rounds, the ways taking turns; keep the fastest, but leave
  oneDNN only for a way at least ``MARGIN`` faster. Shapes too small for a timing to mean anything
  (``MIN_TUNED_MACS``) keep oneDNN untimed;
- ``onednn``: never anything else; ``products``: the products wherever they apply;
- ``rule``: ``conv_gemm.pays_off``, the fixed rule of earlier releases (to reproduce their figures).

Each layer is timed alone, and a way that wins alone can lose inside the step (a copy into the other memory order
that its neighbours then pay for; measured: picks 4-10 % slower than oneDNN alone in some fp32 steps). So under
``auto`` the step itself has the last word (``StepCheck``): after the first step, which timed the layers, the next
``STEP_ROUNDS`` pairs of training steps run the picks and oneDNN alone in turn, and oneDNN alone is kept unless
the picks' best step beats its best by ``STEP_MARGIN``; the verdict is cached with the layers' choices, keyed by
the step's set of layer shapes. These steps are real training steps: only their speed differs.

Outside a training step (no ``conv_path`` context: sampling, reconstruction, encoding, export) and inside
torch.compile's or a tracer's graphs, the layers follow the rule as before. A forward pass without gradients
inside a training context (``auto``) is keyed and timed separately, forward only.

The choices are kept in ``<cache>/conv_paths-<hash>.json`` (cache: $ALITOOL_CACHE, else $XDG_CACHE_HOME/alitool,
else ~/.cache/alitool), one file per machine: CPU model and flags, torch version and CPU capability, and the
variables that hold the kernels below the CPU (ONEDNN_MAX_CPU_ISA, ...), hashed into the name. A second run on
the same machine times nothing; a file that cannot be read is ignored with one warning line and rewritten.
Choices timed while other work held the machine may be poor ones: delete the file to have them timed again.

Timing never changes what the step computes: it runs on detached views of the layer's operands, which it never
writes, draws its random gradient from a generator of its own, and restores torch's CPU random state besides.
The choice is per machine, so two machines may round differently; pin ``onednn`` (or ``products``) for
bit-identical runs across machines.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import hashlib
import json
import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from alitool import conv_gemm
from alitool.atomic import atomic_write_bytes
from alitool.cpu_features import cpuinfo, isa_limits

MODES = ("auto", "onednn", "products", "rule")
PATHS = ("onednn", "relayout", "products")
# oneDNN is what torch runs everywhere and what every result of earlier releases came from: another way must
# beat it clearly, not by a timing's noise, to be taken.
MARGIN = 1.05
# Forward multiply-adds below which a layer keeps oneDNN untimed: its forward + backward takes well under a
# millisecond, where a busy machine's noise is larger than any difference between the ways, and the step's time
# is spent elsewhere (the tiny test models all fall below it).
MIN_TUNED_MACS = 10_000_000
WARMUP, ROUNDS = 1, 3
# The whole-step check: pairs of steps (oneDNN alone, the picks) timed after the first step, and the margin the
# picks' best step must win by.
STEP_ROUNDS = 3
STEP_MARGIN = 1.02
STEP_VERDICTS = ("picks", "onednn")
STEP_KEY_PREFIX = "step "  # cache keys of whole-step verdicts; every other key is a layer's
CACHE_FORMAT = 1
CACHE_ENV = "ALITOOL_CACHE"

_log = logging.getLogger("alitool")
# The train.conv_path of the forward pass being run; None outside a training step.
_mode: contextvars.ContextVar[str | None] = contextvars.ContextVar("alitool_conv_path", default=None)
# Set by ``StepCheck`` for a step that runs ``auto``'s layers on oneDNN alone; None: the picks.
_step_onednn: contextvars.ContextVar[bool] = contextvars.ContextVar("alitool_step_onednn", default=False)
# (layer key, path) of every convolution of a ``StepCheck``'s first step; None when nobody is listening.
_seen: contextvars.ContextVar[list | None] = contextvars.ContextVar("alitool_conv_seen", default=None)


@contextlib.contextmanager
def conv_path(mode: str) -> Iterator[None]:
    """Run the layers' convolutions the ``mode`` way (one of ``MODES``) inside this block."""
    if mode not in MODES:
        raise ValueError(f"conv path {mode!r} is not one of {', '.join(MODES)}")
    token = _mode.set(mode)
    try:
        yield
    finally:
        _mode.reset(token)


# ---- the ways ----------------------------------------------------------------------------------------------

def _onednn(transposed: bool, x: Tensor, weight: Tensor, bias: Tensor | None, stride: tuple[int, int]) -> Tensor:
    return F.conv_transpose2d(x, weight, bias, stride) if transposed else F.conv2d(x, weight, bias, stride)


def _relayout(transposed: bool, x: Tensor, weight: Tensor, bias: Tensor | None,
              stride: tuple[int, int]) -> Tensor:
    own = torch.channels_last if conv_gemm.stored_channels_last(x) else torch.contiguous_format
    other = torch.contiguous_format if own == torch.channels_last else torch.channels_last
    out = _onednn(transposed, x.contiguous(memory_format=other), weight.contiguous(memory_format=other), bias,
                  stride)
    return out.contiguous(memory_format=own)


def _products(transposed: bool, x: Tensor, weight: Tensor, bias: Tensor | None,
              stride: tuple[int, int]) -> Tensor:
    return (conv_gemm.conv_transpose2d if transposed else conv_gemm.conv2d)(x, weight, bias, stride)


_WAYS = {"onednn": _onednn, "relayout": _relayout, "products": _products}


def run(path: str, transposed: bool, x: Tensor, weight: Tensor, bias: Tensor | None,
        stride: tuple[int, int]) -> Tensor:
    """The plain convolution (transposed: ``weight`` is [C_in, C_out, kh, kw]) the ``path`` way; what is timed is
    what runs."""
    return _WAYS[path](transposed, x, weight, bias, tuple(stride))


# ---- what a choice is keyed by -----------------------------------------------------------------------------

def signature(transposed: bool, x: Tensor, weight: Tensor, bias: Tensor | None,
              stride: tuple[int, int]) -> tuple:
    """Everything the ways' speed depends on: kind, input and weight shapes, stride, bias, dtype (and autocast's),
    memory orders, which gradients the backward pass computes, and the intra-op thread count (and the device,
    which only the CPU's entries are timed for). A tuple, cheap enough to build on every call."""
    grads = tuple(name for name, t in (("x", x), ("w", weight)) if torch.is_grad_enabled() and t.requires_grad)
    return (x.device.type, transposed, tuple(x.shape), tuple(weight.shape), tuple(stride), bias is not None, x.dtype,
            conv_gemm.compute_dtype(x), conv_gemm.stored_channels_last(x), conv_gemm.stored_channels_last(weight),
            grads, torch.get_num_threads())


def _dims(shape: tuple[int, ...]) -> str:
    return "x".join(map(str, shape))


def _name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def layer_key(sig: tuple) -> str:
    """``signature`` as the cache file's text, e.g.
    "conv x100x64x13x13 w128x64x4x4 s1x1 nobias float32>bfloat16 LL grad:x,w threads:2"."""
    _, transposed, x_shape, w_shape, stride, bias, dtype, computed, x_last, w_last, grads, threads = sig
    dtypes = _name(dtype) if computed == dtype else f"{_name(dtype)}>{_name(computed)}"
    order = ("L" if x_last else "C") + ("L" if w_last else "C")  # NHWC (channels_last) or NCHW: input, weight
    return (f"{'convT' if transposed else 'conv'} x{_dims(x_shape)} w{_dims(w_shape)} s{stride[0]}x{stride[1]} "
            f"{'bias' if bias else 'nobias'} {dtypes} {order} grad:{','.join(grads) or '-'} threads:{threads}")


def forward_macs(transposed: bool, x: Tensor, weight: Tensor, stride: tuple[int, int]) -> int:
    """Multiply-adds of the forward pass: one per weight element per position of the smaller map."""
    small = x.shape[-2:] if transposed else conv_gemm.output_side(x.shape[-2:], weight.shape[-2:], stride)
    return x.shape[0] * small[0] * small[1] * weight.numel()


# ---- the cache file --------------------------------------------------------------------------------------

def machine() -> dict[str, str]:
    """What the cache file is for: a file timed on one machine (or under other kernel limits) says nothing of
    another."""
    model, flags = cpuinfo() or ("unknown", frozenset())
    return {"cpu": model, "flags": " ".join(sorted(flags)), "torch": torch.__version__,
            "capability": torch.backends.cpu.get_cpu_capability(),
            **{f"env {name}": value for name, value in sorted(isa_limits().items())}}


def cache_dir() -> Path:
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]).expanduser() / "alitool"
    return Path.home() / ".cache" / "alitool"


def cache_file(described: dict[str, str] | None = None) -> Path:
    """The file for ``described`` (``machine()`` by default): its hash is in the name."""
    described = machine() if described is None else described
    digest = hashlib.sha256(json.dumps(described, sort_keys=True).encode()).hexdigest()[:16]
    return cache_dir() / f"conv_paths-{digest}.json"


def _read(path: Path, described: dict[str, str]) -> dict[str, dict]:
    """The choices in ``path`` ({} when there is no file); ValueError saying why for a file that is not one of
    ours for this machine."""
    try:
        data = json.loads(path.read_bytes())
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"unreadable ({type(e).__name__})") from e
    if not isinstance(data, dict) or data.get("format") != CACHE_FORMAT or data.get("machine") != described:
        raise ValueError("not a conv path cache of this format and machine")
    choices = data.get("choices")
    if not isinstance(choices, dict) or not all(
            isinstance(c, dict) and c.get("path") in (STEP_VERDICTS if k.startswith(STEP_KEY_PREFIX) else PATHS)
            for k, c in choices.items()):
        raise ValueError("a choice names no known path")
    return choices


@dataclasses.dataclass
class Decision:
    path: str
    source: str  # timed | cached | small (oneDNN untimed) | ineligible | pinned (onednn/products) | rule


class Autotuner:
    """The process's choices: read from the cache file once, timed where missing, written back at once."""

    def __init__(self, path: Path | None = None, described: dict[str, str] | None = None,
                 warmup: int = WARMUP, rounds: int = ROUNDS, min_macs: int = MIN_TUNED_MACS):
        self.described = machine() if described is None else described
        self.path = cache_file(self.described) if path is None else path
        self.warmup, self.rounds, self.min_macs = warmup, rounds, min_macs
        self.choices: dict[str, dict] | None = None  # None: the file is not read yet
        # (mode, signature): what the layers did in this process, for ``describe``
        self.decisions: dict[tuple[str, tuple], Decision] = {}
        self.timed = 0  # layer shapes timed by this tuner: what the tests count
        self._write_failed = False

    def _load(self) -> dict[str, dict]:
        if self.choices is None:
            try:
                self.choices = _read(self.path, self.described)
            except ValueError as e:
                _log.warning("warning: conv path cache %s is %s; timing the layers again and rewriting it",
                             self.path, e)
                self.choices = {}
        return self.choices

    def _store(self, key: str, entry: dict) -> None:
        """Add one choice and write the file, merged with what another process may have added meanwhile."""
        self._load()[key] = entry
        try:
            on_disk = _read(self.path, self.described)
        except ValueError:
            on_disk = {}
        merged = {**on_disk, **self.choices}
        data = {"format": CACHE_FORMAT, "machine": self.described, "choices": merged}
        try:
            atomic_write_bytes(self.path, lambda f: f.write(json.dumps(data, indent=1, sort_keys=True).encode()))
        except OSError as e:  # a read-only or full disk costs the next run a re-timing, never this run
            if not self._write_failed:
                _log.warning("warning: could not write the conv path cache %s (%s); choices kept for this run",
                             self.path, e)
            self._write_failed = True

    def choose(self, mode: str, transposed: bool, x: Tensor, weight: Tensor, bias: Tensor | None,
               stride: tuple[int, int]) -> str:
        sig = signature(transposed, x, weight, bias, stride)
        decision = self.decisions.get((mode, sig))
        if decision is None:
            decision = self._decide(mode, layer_key(sig), transposed, x, weight, bias, stride)
            self.decisions[(mode, sig)] = decision
        seen = _seen.get()
        if seen is not None:
            seen.append((layer_key(sig), decision.path))
        return decision.path

    def _decide(self, mode: str, key: str, transposed: bool, x: Tensor, weight: Tensor, bias: Tensor | None,
                stride: tuple[int, int]) -> Decision:
        if mode == "rule":
            return Decision(_rule(transposed, x, weight, stride), "rule")
        if not conv_gemm.applies(x, weight):
            return Decision("onednn", "ineligible")
        if mode != "auto":
            return Decision(mode, "pinned")
        cached = self._load().get(key)
        if cached is not None:
            return Decision(cached["path"], "cached")
        if forward_macs(transposed, x, weight, stride) < self.min_macs:
            return Decision("onednn", "small")
        seconds = time_paths(transposed, x, weight, bias, stride, self.warmup, self.rounds)
        self.timed += 1
        path = pick(seconds)
        self._store(key, {"path": path, "ms": {p: round(1000 * s, 3) for p, s in seconds.items()}})
        return Decision(path, "timed")

    def describe(self, mode: str) -> str:
        """One line for the run's log: how many of the layer shapes run in this process under ``mode`` took
        which way, and for ``auto`` where the choices are kept."""
        seen = [d for (m, _), d in self.decisions.items() if m == mode]
        how = f"autotuned, cached in {self.path}" if mode == "auto" else f"train.conv_path {mode}"
        if not seen:
            return f"conv paths ({how}): no convolution has run yet"
        counts = {p: sum(d.path == p for d in seen) for p in PATHS}
        ways = [f"{counts['products']} of {len(seen)} layer shapes as im2col products"]
        if counts["relayout"]:
            ways.append(f"{counts['relayout']} as oneDNN in the other memory order")
        if counts["onednn"]:
            ways.append("the rest oneDNN")
        sources = [f"{n} {label}" for label, n in (
            ("timed now", sum(d.source == "timed" for d in seen)),
            ("from the cache", sum(d.source == "cached" for d in seen)),
            ("too small to time", sum(d.source == "small" for d in seen)),
            ("not on the CPU or not fp32/bf16", sum(d.source == "ineligible" for d in seen))) if n]
        detail = f" ({', '.join(sources)})" if sources and mode == "auto" else ""
        return f"conv paths ({how}): {', '.join(ways)}{detail}"


def _rule(transposed: bool, x: Tensor, weight: Tensor, stride: tuple[int, int]) -> str:
    small = tuple(x.shape[-2:]) if transposed else conv_gemm.output_side(x.shape[-2:], weight.shape[-2:], stride)
    return "products" if conv_gemm.pays_off(x, weight, small) else "onednn"


# ---- timing ----------------------------------------------------------------------------------------------

def time_paths(transposed: bool, x: Tensor, weight: Tensor, bias: Tensor | None, stride: tuple[int, int],
               warmup: int = WARMUP, rounds: int = ROUNDS) -> dict[str, float]:
    """Best seconds of each way, forward + backward (the gradients the step would compute) on detached views
    of the layer's operands, the ways taking turns so that a slow spell of the machine hits them alike. The
    backward runs outside autocast, as the step's does."""
    with torch.random.fork_rng(devices=[]):  # nothing here draws from torch's generator; this makes it certain
        generator = torch.Generator().manual_seed(0)
        leaves = [None if t is None else t.detach().requires_grad_(torch.is_grad_enabled() and t.requires_grad)
                  for t in (x, weight, bias)]
        wanted = [t for t in leaves if t is not None and t.requires_grad]
        grad: list[Tensor] = []

        def once(path: str) -> None:
            out = run(path, transposed, *leaves, stride)
            if wanted:
                if not grad:
                    grad.append(torch.randn(out.shape, generator=generator).to(out.dtype))
                with torch.autocast("cpu", enabled=False):
                    torch.autograd.grad(out, wanted, grad[0])

        best = dict.fromkeys(PATHS, float("inf"))
        for path in PATHS:
            for _ in range(warmup):
                once(path)
        for _ in range(max(rounds, 1)):
            for path in PATHS:
                start = time.perf_counter()
                once(path)
                best[path] = min(best[path], time.perf_counter() - start)
    return best


def pick(seconds: dict[str, float]) -> str:
    """The fastest way, if it beats oneDNN by ``MARGIN``; else oneDNN."""
    fastest = min(seconds, key=seconds.__getitem__)
    return fastest if seconds[fastest] * MARGIN <= seconds["onednn"] else "onednn"


# ---- what the layers and the trainer call ------------------------------------------------------------------

_tuner: Autotuner | None = None


def tuner() -> Autotuner:
    """This process's tuner, made on first use for this machine's cache file."""
    global _tuner
    if _tuner is None:
        _tuner = Autotuner()
    return _tuner


def start_over(**settings) -> Autotuner:
    """Forget this process's choices and make a new tuner (``Autotuner``'s arguments): for tests and benchmarks
    that measure a first run, or change the cache folder."""
    global _tuner
    _tuner = Autotuner(**settings)
    return _tuner


def forget() -> None:
    """Forget this process's choices; the next convolution makes a tuner for the cache folder of that time."""
    global _tuner
    _tuner = None


def path_for(transposed: bool, x: Tensor, weight: Tensor, bias: Tensor | None, stride: tuple[int, int]) -> str:
    """The way a plain convolution runs now: ``onednn``, ``relayout`` or ``products``."""
    if torch.compiler.is_compiling() or torch.jit.is_tracing():  # a graph is being recorded: nothing to time
        return _rule(transposed, x, weight, stride)
    mode = _mode.get()
    if mode is None:
        return _rule(transposed, x, weight, stride)
    if mode == "auto" and _step_onednn.get():
        mode = "onednn"
    return tuner().choose(mode, transposed, x, weight, bias, tuple(stride))


def describe(mode: str) -> str:
    """The log line for a run with ``train.conv_path`` = ``mode``, e.g. "conv paths (autotuned, cached in
    ~/.cache/alitool/conv_paths-....json): 3 of 8 layer shapes as im2col products, the rest oneDNN (8 from the
    cache)". Call it after the first training step: the shapes are known only once they have run."""
    return tuner().describe(mode)


# ---- the whole step's word ---------------------------------------------------------------------------------

class StepCheck:
    """``auto``'s per-layer picks against oneDNN alone, timed on whole training steps (module docstring). Wrap
    each training step (forward, backward, optimiser) in ``with check.step():``; ``report()`` gives the log line
    once the verdict is in. Under any other ``train.conv_path`` it only passes the steps through."""

    def __init__(self, mode: str, rounds: int = STEP_ROUNDS, margin: float = STEP_MARGIN):
        self.rounds, self.margin = rounds, margin
        self.verdict: str | None = None if mode == "auto" else "pinned"
        self.source = ""  # timed | cached | no picks: how the verdict came
        self.trials: list[str] = []  # the ways of the steps still to time
        self.best: dict[str, float] = {}
        self.key = ""
        self._first = mode == "auto"
        self._told = mode != "auto"

    @property
    def settled(self) -> bool:
        return self.verdict is not None

    @contextlib.contextmanager
    def step(self) -> Iterator[None]:
        way = self.trials[0] if self.trials else ("onednn" if self.verdict == "onednn" else "picks")
        seen: list | None = [] if self._first else None
        onednn_token, seen_token = _step_onednn.set(way == "onednn"), _seen.set(seen)
        start = time.perf_counter()
        try:
            yield
        finally:
            _step_onednn.reset(onednn_token)
            _seen.reset(seen_token)
        elapsed = time.perf_counter() - start  # reached only when the step did not raise
        if seen is not None:
            self._first = False
            self._after_first_step(seen)
        elif self.trials:
            self.trials.pop(0)
            self.best[way] = min(self.best.get(way, float("inf")), elapsed)
            if not self.trials:
                self._decide()

    def _after_first_step(self, seen: list[tuple[str, str]]) -> None:
        if all(path == "onednn" for _, path in seen):
            self.verdict, self.source = "picks", "no picks"  # every layer runs oneDNN already: nothing to weigh
            return
        shapes = "\n".join(sorted({key for key, _ in seen}))
        self.key = STEP_KEY_PREFIX + hashlib.sha256(shapes.encode()).hexdigest()[:16]
        cached = tuner()._load().get(self.key)
        if cached is not None:
            self.verdict, self.source = cached["path"], "cached"
            self.best = {way: ms / 1000 for way, ms in cached.get("ms", {}).items()}
        else:
            self.trials = ["onednn", "picks"] * max(self.rounds, 1)  # taking turns, as the layers' timing does

    def _decide(self) -> None:
        self.verdict = "picks" if self.best["picks"] * self.margin <= self.best["onednn"] else "onednn"
        self.source = "timed"
        tuner()._store(self.key, {"path": self.verdict,
                                  "ms": {way: round(1000 * s, 1) for way, s in self.best.items()}})

    def report(self) -> str | None:
        """The log line, once, when the verdict is in (None before, after, and where there is nothing to weigh)."""
        if self._told or self.verdict is None:
            return None
        self._told = True
        if self.source == "no picks":
            return None
        steps = ", ".join(f"{way} {1000 * s:.0f} ms" for way, s in sorted(self.best.items()))
        kept = "the per-layer picks kept" if self.verdict == "picks" else "oneDNN alone kept for every layer"
        how = "from the cache" if self.source == "cached" else f"best of {self.rounds} steps each"
        return f"conv paths, whole step: {kept} ({steps}; {how})"
