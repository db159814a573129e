import pytest
import torch
import torch.nn.functional as F

from alexnet.network.lrn import LocalResponseNorm, local_response_norm


@pytest.mark.parametrize("shape", [(4, 96, 13, 11), (2, 7, 5, 5), (1, 3, 2, 2)])
@pytest.mark.parametrize("size", [5, 4, 1])
@pytest.mark.parametrize("channels_last", [False, True])
def test_matches_pytorch_values_and_gradients(shape, size, channels_last):
    torch.manual_seed(0)
    x = torch.randn(shape) * 4
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    g = torch.randn(shape)
    alpha = 0.05  # large so the normaliser matters
    x1 = x.clone().requires_grad_()
    ref = F.local_response_norm(x1, size, alpha, 0.75, 2.0)
    ref.backward(g)
    x2 = x.clone().requires_grad_()
    ours = local_response_norm(x2, size, alpha, 0.75, 2.0)
    ours.backward(g)
    assert (ours - ref).abs().max().item() <= 1e-5
    assert (x2.grad - x1.grad).abs().max().item() <= 1e-5


def test_other_beta_and_gradcheck():
    torch.manual_seed(0)
    x = torch.randn(2, 6, 3, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: local_response_norm(t, 3, 0.3, 0.6, 1.0), (x,))
    assert torch.autograd.gradcheck(lambda t: local_response_norm(t, 5, 0.3, 0.75, 2.0), (x,))


def test_alpha_conventions_differ_by_n():
    x = torch.randn(2, 8, 4, 4) * 10
    printed = local_response_norm(x, 5, 1e-2, 0.75, 2.0, alpha_convention="sum")
    code = local_response_norm(x, 5, 5e-2, 0.75, 2.0, alpha_convention="mean")
    assert torch.allclose(printed, code, atol=1e-6)
    # The printed formula by hand for one position: alpha times the plain sum of squares.
    i = 3
    window = x[:, 1:6]  # channels i-2 .. i+2
    manual = x[:, i] / (2.0 + 1e-2 * (window**2).sum(1)) ** 0.75
    assert torch.allclose(printed[:, i], manual, atol=1e-6)


def test_deterministic_mode():
    torch.use_deterministic_algorithms(True)
    try:
        x = torch.randn(2, 16, 5, 5, requires_grad=True)
        LocalResponseNorm()(x).sum().backward()
        g1 = x.grad.clone()
        x.grad = None
        LocalResponseNorm()(x).sum().backward()
        assert torch.equal(g1, x.grad)
    finally:
        torch.use_deterministic_algorithms(False)


def test_bf16_input_keeps_dtype():
    x = torch.randn(2, 8, 4, 4)
    y = local_response_norm(x.bfloat16())
    assert y.dtype == torch.bfloat16
    assert torch.allclose(y.float(), local_response_norm(x), atol=2e-2)


def test_torch_impl_is_the_reference():
    x = torch.randn(2, 8, 4, 4)
    a = LocalResponseNorm(impl="torch", alpha_convention="sum", alpha=0.01)(x)
    b = LocalResponseNorm(impl="fast", alpha_convention="sum", alpha=0.01)(x)
    assert torch.allclose(a, b, atol=1e-6)


def test_bad_arguments():
    with pytest.raises(ValueError, match="alpha_convention"):
        LocalResponseNorm(alpha_convention="avg")
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        local_response_norm(torch.randn(3, 4))


def test_groups_normalise_each_tower_separately():
    torch.manual_seed(0)
    x = (torch.randn(2, 12, 4, 4) * 4).requires_grad_()
    g = torch.randn(2, 12, 4, 4)
    ours = local_response_norm(x, 5, 0.05, 0.75, 2.0, groups=2)
    ours.backward(g)
    grad_ours = x.grad.clone()
    x.grad = None
    ref = torch.cat([F.local_response_norm(c, 5, 0.05, 0.75, 2.0) for c in x.chunk(2, 1)], 1)
    ref.backward(g)
    assert (ours - ref).abs().max() <= 1e-5 and (grad_ours - x.grad).abs().max() <= 1e-5
    # ...which differs from one window over all 12 channels at the tower boundary.
    whole = local_response_norm(x, 5, 0.05, 0.75, 2.0)
    assert not torch.allclose(whole[:, 5:7], ours[:, 5:7])
    assert torch.allclose(whole[:, :3], ours[:, :3])


def test_paper_model_uses_per_tower_lrn():
    from alexnet.network.model import build_model

    assert build_model(variant="paper").norm1.groups == 2
    assert build_model(variant="paper", towers=1).norm1.groups == 1


def _float64_reference(x, g, size, alpha, beta, k, groups=1):
    xd = x.detach().double().requires_grad_()
    ref = local_response_norm(xd, size, alpha, beta, k, groups=groups)
    return ref, *torch.autograd.grad(ref, xd, g.double())


@pytest.mark.parametrize("channels_last", [False, True])
def test_pytorch_path_ignores_autocast(channels_last):
    # The banded matmul is on autocast's bf16 list; run in bf16 the window sums lose ~2^-9
    # of their value, which with alpha * s >> k moves y by ~1e-3 relative. In float32 the
    # error is a few dozen roundings of 2^-24, well inside 2^-16 (with an absolute floor
    # relative to the largest value for the gradient's cancellations).
    torch.manual_seed(0)
    x = torch.randn(2, 16, 6, 5) * 10
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    x.requires_grad_()
    g = torch.randn_like(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = local_response_norm(x, 5, 5.0, 0.75, 0.1, impl="matmul")
        (gx,) = torch.autograd.grad(y, x, g)  # backward under autocast too
    assert y.dtype == gx.dtype == torch.float32
    ref, gref = _float64_reference(x, g, 5, 5.0, 0.75, 0.1)
    assert ((y.double() - ref).abs() <= 2.0**-16 * ref.abs()).all()
    assert ((gx.double() - gref).abs() <= 2.0**-16 * (gref.abs() + gref.abs().max())).all()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_fallback_is_float32_under_autocast(dtype):
    # NCHW bf16 and any fp16 take the PyTorch path in float32: under autocast the result
    # and the input gradient must be exactly the float32 computation's, rounded once.
    torch.manual_seed(0)
    x = (torch.randn(2, 16, 6, 5) * 10).to(dtype).requires_grad_()
    g = torch.randn(2, 16, 6, 5).to(dtype)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = local_response_norm(x, 5, 5.0, 0.75, 0.1, groups=2)
        (gx,) = torch.autograd.grad(y, x, g)
    assert y.dtype == gx.dtype == dtype
    xf = x.detach().float().requires_grad_()
    yf = local_response_norm(xf, 5, 5.0, 0.75, 0.1, groups=2, impl="matmul")
    (gxf,) = torch.autograd.grad(yf, xf, g.float())
    assert torch.equal(y, yf.to(dtype)) and torch.equal(gx, gxf.to(dtype))


@pytest.mark.parametrize("groups", [1, 2])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_pointwise_form_for_accelerators_matches_the_banded_matmul(groups, dtype):
    """The form GPUs run under torch.compile (shifted sums of the padded squares): same
    values and input gradients as the banded matmul, eager and, once, compiled."""
    from alexnet.network.lrn import local_response_norm, lrn_pointwise

    torch.manual_seed(0)
    x = (torch.randn(3, 96, 7, 7) * 3).to(dtype).contiguous(memory_format=torch.channels_last)
    g = torch.randn(3, 96, 7, 7).to(dtype)
    forms = {
        "matmul": lambda t: local_response_norm(t, groups=groups, impl="matmul"),
        "pointwise": lambda t: lrn_pointwise(t, 5, 1e-4 / 5, 0.75, 2.0, groups),
    }
    if groups == 2 and dtype == torch.float32:
        forms["compiled"] = torch.compile(forms["pointwise"], fullgraph=True)
    out = {}
    for name, fn in forms.items():
        xi = x.clone().requires_grad_()
        y = fn(xi)
        y.backward(g)
        assert y.dtype == dtype
        out[name] = (y.float(), xi.grad.float())
    tol = {"atol": 1e-5, "rtol": 1e-5} if dtype == torch.float32 else {"atol": 1e-2, "rtol": 1e-2}
    for name in forms:
        torch.testing.assert_close(out[name][0], out["matmul"][0], **tol)
        torch.testing.assert_close(out[name][1], out["matmul"][1], **tol)


def test_triton_kernels_match_the_banded_matmul_in_the_interpreter(tmp_path, cli_env):
    """The experimental fused GPU kernels (network/lrn_triton.py), run by Triton's CPU
    interpreter: values and input gradients as the banded matmul, for odd and even window
    sizes, one and two towers, float32 and bf16. Skipped where Triton is not installed."""
    import subprocess
    import sys

    pytest.importorskip("triton")
    script = """
import torch
from alexnet.network.lrn import local_response_norm
from alexnet.network.lrn_triton import triton_lrn
torch.manual_seed(0)
for size in (5, 4):
    for groups in (1, 2):
        for dt, tol in ((torch.float32, 1e-5), (torch.bfloat16, 5e-2)):
            x = (torch.randn(2, 12, 3, 5) * 3).to(dt).contiguous(memory_format=torch.channels_last)
            g = torch.randn(2, 12, 3, 5).to(dt)
            xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
            ya = local_response_norm(xa, size=size, groups=groups, impl="matmul")
            yb = triton_lrn(xb, size, 1e-4 / size, 0.75, 2.0, groups)
            ya.backward(g)
            yb.backward(g)
            assert yb.dtype == dt and xb.grad.dtype == dt
            torch.testing.assert_close(yb.float(), ya.float(), atol=tol, rtol=tol)
            torch.testing.assert_close(xb.grad.float(), xa.grad.float(), atol=tol, rtol=tol)
print("ok")
"""
    env = {**cli_env, "TRITON_INTERPRET": "1"}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True,
                          timeout=300)  # fmt: skip
    assert done.returncode == 0 and "ok" in done.stdout, done.stderr[-2000:]
