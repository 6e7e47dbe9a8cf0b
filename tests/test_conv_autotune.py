"""The convolution path chosen per layer shape on the running machine (alitool/conv_autotune.py): what is timed,
what is kept on disk and read back, and that choosing never changes what a training step computes."""

import json
import logging
import time

import pytest
import torch
from torch import nn

from alitool import conv_autotune
from alitool.config import with_train
from alitool.layers import TableConv2d, TableConvTranspose2d
from alitool.trainers.ali import ALIGame

CL = torch.channels_last


@pytest.fixture
def fresh_cache(tmp_path, monkeypatch):
    """A cache folder of the test's own, and a tuner that times every shape once, without warm-up."""
    monkeypatch.setenv(conv_autotune.CACHE_ENV, str(tmp_path / "cache"))
    yield lambda **kw: conv_autotune.start_over(**{"warmup": 0, "rounds": 1, "min_macs": 0, **kw})
    conv_autotune.forget()  # the next test's layers start from the cache folder of their own time


def _conv_step(layer: nn.Module, x: torch.Tensor, mode: str = "auto") -> torch.Tensor:
    with conv_autotune.conv_path(mode):
        out = layer(x)
    out.float().square().sum().backward()
    return out


def _layer(transposed: bool = False) -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    if transposed:
        return TableConvTranspose2d(6, 4, 3, 2), torch.randn(3, 6, 4, 4, requires_grad=True)
    return TableConv2d(4, 6, 3, 2), torch.randn(3, 4, 9, 9, requires_grad=True)


def test_the_second_run_reads_the_cache_and_times_nothing(fresh_cache):
    tuner = fresh_cache()
    layer, x = _layer()
    _conv_step(layer, x)
    _conv_step(layer, x)  # the same shape again in this process: no second timing
    assert tuner.timed == 1
    stored = json.loads(tuner.path.read_text())
    assert stored["machine"] == conv_autotune.machine()
    ((key, entry),) = stored["choices"].items()
    assert key.startswith("conv x3x4x9x9 w6x4x3x3 s2x2 bias float32 CC grad:x,w ")
    assert entry["path"] in conv_autotune.PATHS and set(entry["ms"]) == set(conv_autotune.PATHS)

    again = fresh_cache()  # a new process on the same machine
    _conv_step(layer, x)
    assert again.timed == 0
    (decision,) = again.decisions.values()
    assert (decision.path, decision.source) == (entry["path"], "cached")
    assert "1 from the cache" in conv_autotune.describe("auto") and str(again.path) in conv_autotune.describe("auto")


def test_a_pass_without_gradients_is_keyed_and_timed_apart(fresh_cache):
    tuner = fresh_cache()
    layer, x = _layer(transposed=True)
    _conv_step(layer, x)
    with torch.no_grad(), conv_autotune.conv_path("auto"):
        layer(x)
    assert tuner.timed == 2
    keys = sorted(json.loads(tuner.path.read_text())["choices"])
    assert [k.split(" grad:")[1].split()[0] for k in keys] == ["-", "x,w"]
    assert all(k.startswith("convT x3x6x4x4 w6x4x3x3 ") for k in keys)


def test_a_corrupt_cache_file_is_rebuilt_with_one_warning(fresh_cache, caplog):
    path = conv_autotune.cache_file()
    path.parent.mkdir(parents=True)
    path.write_text('{"format": 1, "choices": {"conv x1": {"pa')
    tuner = fresh_cache()
    layer, x = _layer()
    with caplog.at_level(logging.WARNING, logger="alitool"):
        _conv_step(layer, x)
    assert [r.getMessage() for r in caplog.records if "conv path cache" in r.getMessage()] == [
        f"warning: conv path cache {path} is unreadable (JSONDecodeError); timing the layers again and rewriting it"]
    assert tuner.timed == 1
    assert len(json.loads(path.read_text())["choices"]) == 1


def test_another_machine_or_kernel_limit_has_its_own_file(fresh_cache, monkeypatch):
    here = conv_autotune.machine()
    assert conv_autotune.cache_file(here) == conv_autotune.cache_file()
    assert conv_autotune.cache_file({**here, "cpu": "another CPU"}) != conv_autotune.cache_file(here)
    assert conv_autotune.cache_file({**here, "torch": "0.0"}) != conv_autotune.cache_file(here)
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    assert conv_autotune.machine()["env ONEDNN_MAX_CPU_ISA"] == "AVX2"
    assert conv_autotune.cache_file() != conv_autotune.cache_file(here)
    # A file written for another machine is not taken for this one's.
    other = fresh_cache(described={**here, "cpu": "another CPU"}, path=conv_autotune.cache_file(here))
    layer, x = _layer()
    _conv_step(layer, x)
    assert other.timed == 1


def _ops(run) -> set[str]:
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        run()
    return {event.name for event in prof.events()}


def test_pinned_onednn_never_runs_the_products_where_the_rule_would(fresh_cache):
    fresh_cache()
    torch.manual_seed(0)
    layer = TableConv2d(128, 128, 3, 1, bias=False).to(memory_format=CL)
    x = torch.randn(2, 128, 6, 6).contiguous(memory_format=CL).requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ruled = _ops(lambda: _conv_step(layer, x, "rule"))
        pinned = _ops(lambda: _conv_step(layer, x, "onednn"))
    assert "aten::mm" in ruled  # bf16, channels_last, 4x4 output, 128 channels: the rule takes the products
    assert "aten::mm" not in pinned and "aten::convolution" in pinned
    assert conv_autotune.describe("onednn").endswith(": 0 of 1 layer shapes as im2col products, the rest oneDNN")


@pytest.mark.parametrize("transposed", [False, True])
def test_pinned_products_run_wherever_they_apply_and_keep_the_models_memory_order(transposed, fresh_cache):
    """fp32, NCHW, a large map: the rule would never take the products; pinned, they run and give an NCHW map."""
    layer, x = _layer(transposed)
    stock = (nn.ConvTranspose2d(6, 4, 3, 2) if transposed else nn.Conv2d(4, 6, 3, 2))
    stock.load_state_dict(layer.state_dict())
    out = None

    def run():
        nonlocal out
        out = _conv_step(layer, x, "products")

    tuner = fresh_cache()
    ops = _ops(run)
    assert "aten::mm" in ops and "aten::convolution" not in ops
    assert tuner.timed == 0 and not tuner.path.exists()  # pinned: nothing timed, nothing written
    assert out.is_contiguous()
    torch.testing.assert_close(out, stock(x.detach()), rtol=1e-5, atol=1e-5)


def test_timing_leaves_the_random_state_and_the_operands_alone(fresh_cache):
    tuner = fresh_cache(rounds=2)
    layer, x = _layer()
    weight = layer.weight.detach().clone()
    before = torch.get_rng_state()
    with conv_autotune.conv_path("auto"):
        out = layer(x)
    assert tuner.timed == 1
    assert torch.equal(torch.get_rng_state(), before)
    assert torch.equal(layer.weight, weight) and layer.weight.grad is None and x.grad is None
    assert out.grad_fn is not None  # the layer's own output is still on the step's tape


def test_pick_leaves_onednn_only_for_a_clear_win():
    assert conv_autotune.pick({"onednn": 1.0, "relayout": 0.97, "products": 0.96}) == "onednn"
    assert conv_autotune.pick({"onednn": 1.0, "relayout": 0.97, "products": 0.95}) == "products"
    assert conv_autotune.pick({"onednn": 1.0, "relayout": 0.5, "products": 0.95}) == "relayout"
    assert conv_autotune.pick({"onednn": 0.5, "relayout": 1.0, "products": 1.0}) == "onednn"


def test_a_training_step_computes_the_same_with_its_choices_timed_or_read_back(fresh_cache, tiny_cfg):
    """The first step times every layer shape in the middle of its forward pass (dropout draws from the same
    generator around it); a second run that reads those choices from the cache must take the same step."""

    def step(cfg) -> tuple[dict, dict]:
        torch.manual_seed(0)
        game = ALIGame(cfg, torch.device("cpu"))
        x = torch.rand(cfg.train.batch_size, 1, 8, 8, generator=torch.Generator().manual_seed(1))
        torch.manual_seed(2)
        metrics = game.step(x)
        return {k: v.item() for k, v in metrics.items()}, game.model.state_dict()

    cfg = with_train(tiny_cfg, conv_path="auto")
    timing = fresh_cache()
    losses, state = step(cfg)
    assert timing.timed >= 4  # the encoder's, decoder's and D(x)'s convolutions (1x1 maps run as F.linear)
    reading = fresh_cache()
    assert step(cfg)[0] == losses and reading.timed == 0
    torch.testing.assert_close(step(cfg)[1], state, rtol=0, atol=0)
    chosen = {d.path for d in reading.decisions.values()}
    if len(chosen) == 1:  # one way everywhere: the same as pinning that way
        assert step(with_train(cfg, conv_path=chosen.pop()))[0] == losses


def test_the_tiny_test_models_are_too_small_to_time(fresh_cache, tiny_cfg):
    """Below MIN_TUNED_MACS a layer keeps oneDNN untimed, so the rest of the suite runs as before autotuning."""
    tuner = fresh_cache(min_macs=conv_autotune.MIN_TUNED_MACS)
    game = ALIGame(with_train(tiny_cfg, conv_path="auto"), torch.device("cpu"))
    game.step(torch.rand(tiny_cfg.train.batch_size, 1, 8, 8))
    assert tuner.timed == 0 and not tuner.path.exists()
    assert {(d.path, d.source) for d in tuner.decisions.values()} == {("onednn", "small")}
    assert "too small to time" in conv_autotune.describe("auto")


def test_under_autocast_a_bf16_map_and_an_fp32_weight_are_timed_as_bf16(fresh_cache):
    """Inside a bf16 autocast forward every map after the first is bf16 while the weights stay fp32."""
    tuner = fresh_cache()
    layer = TableConv2d(8, 8, 3, 1).to(memory_format=CL)
    x = torch.randn(2, 8, 7, 7, dtype=torch.bfloat16).contiguous(memory_format=CL).requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert "aten::mm" in _ops(lambda: _conv_step(layer, x, "products"))
        _conv_step(layer, x, "auto")
    assert tuner.timed == 1
    (key,) = json.loads(tuner.path.read_text())["choices"]
    assert " bfloat16 LL " in key
    assert layer.weight.grad.dtype == torch.float32


@pytest.mark.parametrize("layout", [torch.contiguous_format, CL])
@pytest.mark.parametrize("transposed", [False, True])
def test_every_way_is_the_convolution_and_keeps_the_memory_order(layout, transposed):
    """In float64 the three ways agree with torch's convolution, forward and backward, and hand back the input's
    memory order (a way that changed it would change every layer after it)."""
    torch.manual_seed(0)
    x = torch.randn(2, 5, 7, 7, dtype=torch.float64).contiguous(memory_format=layout).requires_grad_()
    shape = (5, 3, 3, 3) if transposed else (3, 5, 3, 3)  # [C_in, C_out, ...] transposed, else [C_out, C_in, ...]
    w = torch.randn(shape, dtype=torch.float64).contiguous(memory_format=layout).requires_grad_()
    b = torch.randn(3, dtype=torch.float64, requires_grad=True)
    grads = {}
    for path in conv_autotune.PATHS:
        out = conv_autotune.run(path, transposed, x, w, b, (2, 2))
        assert out.is_contiguous(memory_format=layout), path
        grads[path] = (out, *torch.autograd.grad(out.square().sum(), (x, w, b)))
    for path in ("relayout", "products"):
        for got, want in zip(grads[path], grads["onednn"], strict=True):
            torch.testing.assert_close(got, want)


def _slow_unless(way: str, layer: nn.Module, x: torch.Tensor, seconds: float = 0.02) -> None:
    """One real training step of ``layer`` that, for the test, is slower when its convolution does not run
    ``way``: the whole-step check must follow the step's time, whatever the layers' own timings said."""
    with conv_autotune.conv_path("auto"):
        path = conv_autotune.path_for(False, x, layer.weight, layer.bias, layer.stride)
    _conv_step(layer, x)
    if path != way:
        time.sleep(seconds)


def _seed_products(tuner, layer, x) -> None:
    """The cache says the products won this layer alone (as a timing on another day might have)."""
    with conv_autotune.conv_path("auto"):
        sig = conv_autotune.signature(False, x, layer.weight, layer.bias, layer.stride)
    tuner._store(conv_autotune.layer_key(sig), {"path": "products", "ms": {}})


@pytest.mark.parametrize("faster", ["onednn", "products"])
def test_the_whole_step_decides_between_the_picks_and_onednn_alone(fresh_cache, faster):
    tuner = fresh_cache()
    layer, x = _layer()
    _seed_products(tuner, layer, x)
    check = conv_autotune.StepCheck("auto", rounds=2)
    ways = []
    while not check.settled:
        with check.step():
            with conv_autotune.conv_path("auto"):
                ways.append(conv_autotune.path_for(False, x, layer.weight, layer.bias, layer.stride))
            _slow_unless(faster, layer, x)
    # the first step ran the picks (and listed the layers), then 2 pairs: oneDNN alone, the picks
    assert ways == ["products", "onednn", "products", "onednn", "products"]
    assert check.verdict == ("picks" if faster == "products" else "onednn") and check.source == "timed"
    line = check.report()
    assert line.startswith("conv paths, whole step: ") and check.report() is None  # told once
    assert ("per-layer picks kept" in line) == (faster == "products")
    with check.step(), conv_autotune.conv_path("auto"):  # after the verdict every step follows it
        assert conv_autotune.path_for(False, x, layer.weight, layer.bias, layer.stride) == faster

    again = conv_autotune.StepCheck("auto")  # the next run on this machine: the verdict from the cache
    with again.step(), conv_autotune.conv_path("auto"):
        _conv_step(layer, x)
    assert again.settled and again.source == "cached" and again.verdict == check.verdict
    assert "from the cache" in again.report()


def test_no_whole_step_check_where_every_layer_runs_onednn(fresh_cache):
    fresh_cache()
    layer, x = _layer()
    for mode in ("onednn", "auto"):
        check = conv_autotune.StepCheck(mode)
        with check.step(), conv_autotune.conv_path(mode):
            _conv_step(layer, x, mode="onednn")  # the tuner may pick anything; this layer runs oneDNN
        assert check.settled and check.trials == [] and check.report() is None
