import pytest
import torch
import torch.nn.functional as F

from alexnet.fourier import (
    AUTO_MIN_SPEEDUP,
    Conv2d,
    estimated_speedup,
    fourier_conv2d,
    spectrum_side,
)
from alexnet.model import build_model


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


def test_conv2d_module_uses_the_fourier_path_only_where_it_qualifies():
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
    assert not forced.uses_fourier(x.double())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not forced.uses_fourier(x)
    assert set(forced.state_dict()) == {"weight", "bias"}  # same as nn.Conv2d


def test_auto_picks_paper_conv2_to_conv5_and_skips_narrow_small_layers():
    assert estimated_speedup(96, 256, 5, 27, 27, 2) > AUTO_MIN_SPEEDUP  # conv2
    assert estimated_speedup(256, 384, 3, 13, 13) > AUTO_MIN_SPEEDUP  # conv3
    assert estimated_speedup(384, 256, 3, 13, 13, 2) > AUTO_MIN_SPEEDUP  # conv5
    assert estimated_speedup(1, 24, 5, 28, 28) < 1  # the demo's conv1
    assert estimated_speedup(24, 64, 5, 14, 14, 2) < 1  # the demo's conv2
    # The small network at 28 px: conv2 (14x14, measured ~1.0x) stays direct, conv3 goes.
    conv2, conv3 = Conv2d(48, 128, 5, padding=2, groups=2), Conv2d(128, 192, 3, padding=1)
    assert not conv2.uses_fourier(torch.randn(1, 48, 14, 14))
    assert conv3.uses_fourier(torch.randn(1, 128, 7, 7))


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
