import json
import os

import pytest
import torch
import torch.nn.functional as F

from alexnet.network import fourier
from alexnet.network.fourier import (
    AUTO_MIN_SPEEDUP,
    MEASURED_MIN_SPEEDUP,
    PROBE_MIN_PREDICTED,
    Conv2d,
    conv_decisions,
    estimated_speedup,
    fourier_conv2d,
    spectrum_side,
)
from alexnet.network.model import build_model


def _cl(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize(
    "cin,cout,k,h,w,groups",
    [
        (8, 6, 5, 9, 9, 2),
        (6, 4, 3, 7, 7, 1),
        (3, 4, 7, 5, 6, 1),  # kernel wider than the map, non-square map
        (12, 8, 5, 27, 27, 2),
        (4, 6, 3, 13, 13, 2),
        (2, 2, 3, 1, 1, 1),
    ],
)
def test_fourier_conv_matches_conv2d_values_and_gradients(cin, cout, k, h, w, groups):
    torch.manual_seed(0)
    wt = torch.randn(cout, cin // groups, k, k, requires_grad=True)
    b = torch.randn(cout, requires_grad=True)
    x = _cl(torch.randn(3, cin, h, w)).requires_grad_()
    g = torch.randn(3, cout, h, w)
    p = (k - 1) // 2
    ref = F.conv2d(x.double(), wt.double(), b.double(), padding=p, groups=groups)
    grads_ref = torch.autograd.grad(ref, (x, wt, b), g.double())
    out = fourier_conv2d(x, wt, b, p, groups)
    grads = torch.autograd.grad(out, (x, wt, b), g)
    assert out.shape == ref.shape and out.is_contiguous(memory_format=torch.channels_last)
    assert (out.double() - ref).abs().max().item() < 1e-5 * ref.abs().max().item()
    for got, want in zip(grads, grads_ref, strict=True):
        assert got.shape == want.shape
        assert (got.double() - want).abs().max().item() < 1e-5 * want.abs().max().item()


def test_fourier_conv_without_bias_and_without_input_grad():
    torch.manual_seed(0)
    w = torch.randn(4, 3, 5, 5, requires_grad=True)
    x = torch.randn(2, 3, 8, 8)  # NCHW input works too; no grad needed for it
    out = fourier_conv2d(x, w, None, 2)
    ref = F.conv2d(x, w, None, padding=2)
    assert torch.allclose(out, ref, atol=1e-4)
    (gw,) = torch.autograd.grad(out.square().sum(), (w,))
    (gw_ref,) = torch.autograd.grad(ref.square().sum(), (w,))
    assert torch.allclose(gw, gw_ref, rtol=1e-4, atol=1e-3)


def test_fourier_conv_rejects_what_it_cannot_compute():
    x = torch.randn(1, 2, 8, 8)
    with pytest.raises(ValueError, match="same' padding"):
        fourier_conv2d(x, torch.randn(2, 2, 5, 5), None, 0)
    with pytest.raises(ValueError, match="float32"):
        fourier_conv2d(x.double(), torch.randn(2, 2, 3, 3).double(), None, 1)
    with pytest.raises(ValueError, match="conv impl"):
        Conv2d(2, 2, 3, impl="winograd")


def test_spectrum_side_is_the_smallest_without_aliasing():
    assert spectrum_side(27, 5, 2) == 29  # conv2
    assert spectrum_side(13, 3, 1) == 14  # conv3-conv5


class FakeTimer:
    """Stands in for the probe's timing: returns chosen (direct, Fourier) seconds and
    records each call's shape arguments."""

    def __init__(self, direct: float, fourier: float) -> None:
        self.times = (direct, fourier)
        self.calls: list[tuple] = []
        self.settings: list[dict] = []

    def __call__(self, *shape, **settings) -> tuple[float, float]:
        self.calls.append(shape)
        self.settings.append(settings)
        return self.times


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """An empty probe cache, probing on; yields the cache directory."""
    monkeypatch.setenv("ALEXNET_CACHE", str(tmp_path))
    monkeypatch.delenv("ALEXNET_FOURIER_PROBE", raising=False)
    return tmp_path


def _timer(monkeypatch, direct: float, fourier_s: float) -> FakeTimer:
    timer = FakeTimer(direct, fourier_s)
    monkeypatch.setattr(fourier, "_time_probe", timer)
    return timer


def _layer() -> Conv2d:
    """The small network's conv3 at 28 px (7x7 maps): cheap, and the cost model
    predicts a gain, so "auto" probes it."""
    conv = Conv2d(128, 192, 3, padding=1)
    assert estimated_speedup(128, 192, 3, 7, 7) >= PROBE_MIN_PREDICTED
    return conv


def _probe_files(cache) -> list:
    return sorted(cache.glob("fourier-probe-*.json"))


def test_conv2d_module_uses_the_fourier_path_only_where_it_qualifies(cache, monkeypatch):
    timer = _timer(monkeypatch, 2.0, 1.0)  # Fourier measured faster wherever probed
    forced = Conv2d(4, 4, 5, padding=2, impl="fourier")
    auto_narrow = Conv2d(4, 4, 5, padding=2)
    auto_wide = Conv2d(96, 256, 5, padding=2, groups=2)  # the paper's conv2
    direct = Conv2d(96, 256, 5, padding=2, groups=2, impl="direct")
    strided = Conv2d(4, 4, 5, stride=2, padding=2, impl="fourier")
    pointwise = Conv2d(4, 4, 1, impl="fourier")
    x, wide = torch.randn(1, 4, 9, 9), torch.randn(1, 96, 27, 27)
    assert forced.uses_fourier(x) and auto_wide.uses_fourier(wide)
    assert not auto_narrow.uses_fourier(x) and not direct.uses_fourier(wide)
    assert not strided.uses_fourier(x) and not pointwise.uses_fourier(x)
    assert timer.calls == [(96, 256, 5, 2, 27, 27, 1)]  # only auto_wide was timed
    assert forced.decision["reason"] == "forced by impl='fourier'"
    assert direct.decision["reason"] == "forced by impl='direct'"
    assert strided.decision["reason"].startswith("not eligible: stride")
    assert pointwise.decision["reason"] == "not eligible: 1x1 kernel"
    assert not forced.uses_fourier(x.double())
    assert forced.decision["reason"].startswith("not eligible: torch.float64")
    assert not forced.uses_fourier(x[0])  # unbatched: nn.Conv2d's kernel handles it
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not forced.uses_fourier(x)
    assert forced.decision == {"impl": "direct", "reason": "not eligible: autocast"}
    assert forced.uses_fourier(x)  # the earlier decision for this input, remembered
    assert set(forced.state_dict()) == {"weight", "bias"}  # same as nn.Conv2d


def test_cost_model_alone_picks_paper_conv2_to_conv5_and_skips_narrow_small_layers(
    cache, monkeypatch
):
    timer = _timer(monkeypatch, 1.0, 1.0)
    monkeypatch.setenv("ALEXNET_FOURIER_PROBE", "0")
    assert estimated_speedup(96, 256, 5, 27, 27, 2) > AUTO_MIN_SPEEDUP  # conv2
    assert estimated_speedup(256, 384, 3, 13, 13) > AUTO_MIN_SPEEDUP  # conv3
    assert estimated_speedup(384, 256, 3, 13, 13, 2) > AUTO_MIN_SPEEDUP  # conv5
    assert estimated_speedup(1, 24, 5, 28, 28) < 1  # the demo's conv1
    assert estimated_speedup(24, 64, 5, 14, 14, 2) < 1  # the demo's conv2
    # The small network at 28 px: conv2 (14x14, measured ~1.0x) stays direct, conv3 goes.
    conv2, conv3 = Conv2d(48, 128, 5, padding=2, groups=2), Conv2d(128, 192, 3, padding=1)
    assert not conv2.uses_fourier(torch.randn(1, 48, 14, 14))
    assert conv3.uses_fourier(torch.randn(1, 128, 7, 7))
    assert "by the cost model, not measured" in conv3.decision["reason"]
    assert timer.calls == [] and _probe_files(cache) == []


@pytest.mark.parametrize(
    "direct_s,fourier_s,expected",
    [
        (1.0, 1.5, "direct"),  # Fourier slower: the AVX-512 case the cost model got wrong
        (1.05, 1.0, "direct"),  # faster, but within the probe's noise margin
        (1.5, 1.0, "fourier"),
    ],
)
def test_auto_follows_the_measurement_not_the_prediction(
    cache, monkeypatch, direct_s, fourier_s, expected
):
    assert direct_s / fourier_s < MEASURED_MIN_SPEEDUP or expected == "fourier"
    timer = _timer(monkeypatch, direct_s, fourier_s)
    conv = _layer()
    assert conv.decision is None
    x = torch.randn(2, 128, 7, 7)  # NCHW: only the Fourier path returns channels_last
    out = conv(x)
    assert timer.calls == [(128, 192, 3, 1, 7, 7, 2)]  # probe batch min(N, 32)
    assert conv.decision["impl"] == expected
    assert conv.decision["reason"] == f"measured {direct_s / fourier_s:.2f}x at batch 2"
    predicted = estimated_speedup(128, 192, 3, 7, 7)
    assert conv.decision["predicted"] == pytest.approx(predicted, abs=1e-3)
    json.dumps(conv.decision)
    assert out.is_contiguous(memory_format=torch.channels_last) == (expected == "fourier")
    assert torch.allclose(out, F.conv2d(x, conv.weight, conv.bias, padding=1), atol=1e-4)
    (path,) = _probe_files(cache)
    record = json.loads(path.read_text())
    assert record["choice"] == expected and record["speedup"] == pytest.approx(direct_s / fourier_s)
    assert record["direct_ms"] == pytest.approx(direct_s * 1e3)
    assert record["fourier_ms"] == pytest.approx(fourier_s * 1e3)
    assert record["predicted"] == pytest.approx(predicted)
    assert record["key"]["threads"] == torch.get_num_threads()
    assert record["key"]["layer"] == {"cin": 128, "cout": 192, "k": 3, "groups": 1, "h": 7, "w": 7}


def test_probe_results_are_reused_from_memory_and_disk(cache, monkeypatch):
    timer = _timer(monkeypatch, 2.0, 1.0)
    conv = _layer()
    x = torch.randn(40, 128, 7, 7)
    conv(x)
    assert len(timer.calls) == 1 and timer.calls[0][-1] == 32  # probe batch capped at 32
    for f in _probe_files(cache):
        f.unlink()
    conv(x), conv(x[:3])  # the module's own memory: no lookup on disk, no timing
    assert len(timer.calls) == 1 and _probe_files(cache) == []
    conv = _layer()
    conv(x)  # a new module of the same shape probes once and writes the cache again
    assert len(timer.calls) == 2 and len(_probe_files(cache)) == 1
    again = _layer()
    assert again.uses_fourier(torch.randn(32, 128, 7, 7))  # same probe batch: from disk
    assert len(timer.calls) == 2
    assert again.decision["cached"] and again.decision["reason"].endswith("(cached)")
    # What changes the answer changes the key: map size, probe batch, thread count.
    _layer()(torch.randn(32, 128, 9, 9))
    _layer()(torch.randn(8, 128, 7, 7))
    monkeypatch.setattr(fourier.torch, "get_num_threads", lambda: 97)
    _layer()(x)
    assert len(timer.calls) == 5 and len(_probe_files(cache)) == 4
    # And oneDNN's ISA cap (read once per process, as oneDNN reads it): another value of
    # it than the suite runs under is another machine.
    other = (
        "AVX512_CORE"
        if os.environ.get("ONEDNN_MAX_CPU_ISA", "").upper() != "AVX512_CORE"
        else "AVX2"
    )
    monkeypatch.setattr(fourier, "_MACHINE", {})
    monkeypatch.delenv("DNNL_MAX_CPU_ISA", raising=False)
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", other)
    _layer()(x)
    assert len(timer.calls) == 6 and len(_probe_files(cache)) == 5


@pytest.mark.parametrize(
    "content", [b"\x00\xffnot json", b"[]", b'{"direct_ms": "fast"}', b"{}", None]
)
def test_a_corrupt_or_foreign_cache_file_is_probed_again_and_overwritten(
    cache, monkeypatch, content
):
    timer = _timer(monkeypatch, 2.0, 1.0)
    x = torch.randn(2, 128, 7, 7)
    _layer()(x)
    (path,) = _probe_files(cache)
    if content is None:  # valid, but written for another machine's key
        record = json.loads(path.read_text())
        record["key"]["cpu"] = "some other CPU"
        record["direct_ms"] = 1.0  # would make Fourier the slower one
        content = json.dumps(record).encode()
    path.write_bytes(content)
    conv = _layer()
    assert conv.uses_fourier(x)
    assert len(timer.calls) == 2 and not conv.decision["cached"]
    assert json.loads(path.read_text())["choice"] == "fourier"


def test_an_unwritable_cache_warns_but_decides(cache, monkeypatch):
    timer = _timer(monkeypatch, 2.0, 1.0)
    x = torch.randn(2, 128, 7, 7)
    _layer()(x)
    (path,) = _probe_files(cache)
    path.unlink()
    path.mkdir()  # neither readable as a file nor replaceable
    with pytest.warns(UserWarning, match="could not write the Fourier probe cache"):
        assert _layer().uses_fourier(x)
    assert len(timer.calls) == 2


def test_layers_predicted_below_the_prefilter_are_not_probed(cache, monkeypatch):
    timer = _timer(monkeypatch, 1.0, 0.1)
    conv = Conv2d(24, 64, 5, padding=2, groups=2)  # the demo's conv2
    assert estimated_speedup(24, 64, 5, 14, 14, 2) < PROBE_MIN_PREDICTED
    assert not conv.uses_fourier(torch.randn(4, 24, 14, 14))
    assert (
        conv.decision["reason"].startswith("predicted 0.")
        and "not probed" in (conv.decision["reason"])
    )
    assert timer.calls == [] and _probe_files(cache) == []


def test_evaluation_is_timed_forward_only_and_apart_from_training(cache, monkeypatch):
    timer = _timer(monkeypatch, 1.0, 2.0)
    conv = _layer()
    with torch.no_grad():
        conv(torch.randn(4, 128, 7, 7))
    assert [s["train"] for s in timer.settings] == [False]
    conv(torch.randn(4, 128, 7, 7, requires_grad=True))
    assert [s["train"] for s in timer.settings] == [False, True]
    assert len(_probe_files(cache)) == 2


def test_info_predicts_without_timing_anything(cache, monkeypatch):
    # `alexnet info` runs one image through the model: no probe at batch 1, no cache file.
    from alexnet.apps.summary import summary_dict

    timer = _timer(monkeypatch, 1.0, 0.1)
    with fourier.no_probe():
        assert _layer().uses_fourier(torch.randn(1, 128, 7, 7))  # cost model: predicted gain
    info = summary_dict(build_model(variant="paper"))
    kernels = {r["name"]: r["cpu_kernel"] for r in info["layers"] if r["cpu_kernel"]}
    assert kernels == {
        "conv1": "direct",
        **dict.fromkeys(("conv2", "conv3", "conv4", "conv5"), "fourier"),
    }
    assert timer.calls == [] and _probe_files(cache) == []
    assert _layer().uses_fourier(torch.randn(4, 128, 7, 7))  # outside: probes again
    assert len(timer.calls) == 1
    conv = _layer()  # a guess made under no_probe() is not reused outside it
    with fourier.no_probe():
        conv(torch.randn(1, 128, 7, 7))
    conv(torch.randn(4, 128, 7, 7))
    assert conv.decision["reason"].startswith("measured")  # from the probe cache


def test_a_real_probe_leaves_rng_parameters_and_autograd_alone(cache, monkeypatch):
    monkeypatch.setattr(fourier, "_PROBE_ROUNDS", 1)
    torch.manual_seed(0)
    conv = _layer()
    params = [p.detach().clone() for p in conv.parameters()]
    x = torch.randn(2, 128, 7, 7, requires_grad=True)
    rng = torch.get_rng_state()
    with torch.inference_mode():  # the probe needs autograd even where the caller has none
        conv(x.detach())
    assert torch.equal(torch.get_rng_state(), rng)
    d = conv.decision
    assert d["reason"].startswith("measured") and d["direct_ms"] > 0 and d["fourier_ms"] > 0
    assert all(torch.equal(p, q) for p, q in zip(conv.parameters(), params, strict=True))
    assert all(p.grad is None for p in conv.parameters()) and x.grad is None
    # Later forwards build only their own graph.
    out = conv(x)
    out.sum().backward()
    assert x.grad is not None and conv.weight.grad is not None
    assert torch.equal(torch.get_rng_state(), rng)


def test_conv_decisions_names_every_conv_layer(cache, monkeypatch):
    timer = _timer(monkeypatch, 1.0, 2.0)  # Fourier slower everywhere
    model = build_model(variant="small", num_classes=10)
    wrapped = torch.nn.Module()
    wrapped.add_module("_orig_mod", model)  # as torch.compile's wrapper names it
    names = ["conv1", "conv2", "conv3", "conv4", "conv5"]
    assert conv_decisions(wrapped) == {n: {"impl": None, "reason": "not run yet"} for n in names}
    model(torch.randn(2, 3, 32, 32))
    decisions = conv_decisions(model)
    assert list(decisions) == names and conv_decisions(wrapped) == decisions
    json.dumps(decisions)
    assert {d["impl"] for d in decisions.values()} == {"direct"}
    assert decisions["conv1"]["reason"].startswith("predicted")  # 3 -> 48 channels
    assert decisions["conv3"]["reason"] == "measured 0.50x at batch 2"
    assert len(timer.calls) == sum("measured" in d["reason"] for d in decisions.values())
    decisions["conv3"]["impl"] = "edited"  # a copy: the module's record is untouched
    assert model.conv3.decision["impl"] == "direct"


@pytest.mark.parametrize("variant,size", [("paper", 224), ("small", 32)])
def test_model_matches_a_float64_direct_model(variant, size):
    torch.manual_seed(0)
    fourier = build_model(variant=variant, conv_impl="fourier").to(
        memory_format=torch.channels_last
    )
    exact = build_model(variant=variant, conv_impl="direct").double()
    exact.load_state_dict(fourier.state_dict())
    fourier.eval(), exact.eval()
    x = _cl(torch.randn(2, 3, size, size) * 50)
    assert fourier.conv2.uses_fourier(x)
    assert fourier.conv1.uses_fourier(x) == (variant == "small")  # paper's conv1: stride 4
    a, b = fourier(x), exact(x.double())
    assert ((a - b).norm() / b.norm()).item() < 1e-5
    a.square().sum().backward()
    b.square().sum().backward()
    for name in ("conv1", "conv2", "conv3", "conv4", "conv5"):
        ga, gb = getattr(fourier, name).weight.grad, getattr(exact, name).weight.grad
        # Relative norm, not max: one float32 rounding can flip a max-pool choice between
        # near-equal values and move single entries (PyTorch's own kernels included).
        assert ((ga - gb).norm() / gb.norm()).item() < 1e-4, name


@pytest.mark.slow
def test_torch_compile_runs_the_fourier_and_native_layers_eagerly():
    torch.manual_seed(0)
    model = build_model(variant="small", num_classes=10, conv_impl="fourier")
    model = model.to(memory_format=torch.channels_last).eval()
    x = _cl(torch.randn(4, 3, 32, 32))
    assert model.conv3.uses_fourier(torch.randn(4, 128, 8, 8))
    compiled = torch.compile(model)
    out = compiled(x)
    out.sum().backward()
    assert torch.allclose(out, model(x), atol=1e-5)


@pytest.mark.slow
def test_torch_compile_decides_auto_layers_eagerly_once(cache, monkeypatch):
    timer = _timer(monkeypatch, 2.0, 1.0)
    torch.manual_seed(0)
    model = build_model(variant="small", num_classes=10, dropout=0.0)
    model = model.to(memory_format=torch.channels_last)
    compiled = torch.compile(model)
    for n in (4, 4, 3):
        x = _cl(torch.randn(n, 3, 32, 32))
        compiled(x).sum().backward()
    probed = len(timer.calls)
    assert probed >= 1 and len(_probe_files(cache)) == probed
    assert model.conv3.decision["impl"] == "fourier"
    assert torch.allclose(compiled(x), model(x), atol=1e-5)
    assert len(timer.calls) == probed
