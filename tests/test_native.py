import os
import subprocess
import sys

import pytest
import torch

from alexnet.network import native
from alexnet.network.lrn import local_response_norm

needs_native = pytest.mark.skipif(
    native.library() is None, reason=f"no native kernels here ({native.status()})"
)


def test_kernels_build_wherever_a_compiler_is_found():
    # The other native tests skip without the library; this one keeps a broken build (a
    # syntax error in lrn.c, a bad flag) from hiding behind those skips.
    if os.environ.get("ALEXNET_NATIVE", "1") == "0" or native._compiler() is None:
        pytest.skip(native.status())
    assert native.library() is not None, native.status()


def _cl(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous(memory_format=torch.channels_last)


@needs_native
@pytest.mark.parametrize(
    "shape,groups,size,beta",
    [
        ((4, 96, 7, 9), 1, 5, 0.75),
        ((4, 96, 7, 9), 2, 5, 0.75),
        ((3, 10, 5, 5), 2, 4, 0.6),  # even window: asymmetric, as in PyTorch
        ((2, 7, 3, 3), 1, 3, 0.75),
        ((2, 6, 1, 1), 3, 1, 0.5),
        # Many rows: the kernel's blocks of rows back to back (plus a remainder), here with
        # an even window and towers; and rows wider than a block.
        ((3, 10, 13, 17), 2, 4, 0.6),
        ((1, 1100, 3, 3), 2, 5, 0.75),
    ],
)
def test_native_lrn_matches_float64_reference(shape, groups, size, beta):
    torch.manual_seed(0)
    x = _cl(torch.randn(shape) * 10).requires_grad_()
    g = _cl(torch.randn(shape))
    y = local_response_norm(x, size, 0.05, beta, 2.0, groups=groups)
    assert y.grad_fn is not None and "Native" in type(y.grad_fn).__name__
    (gx,) = torch.autograd.grad(y, x, g)
    xd = x.detach().double().requires_grad_()
    ref = local_response_norm(xd, size, 0.05, beta, 2.0, groups=groups)
    (gref,) = torch.autograd.grad(ref, xd, g.double())
    assert (y.double() - ref).abs().max().item() < 1e-5
    assert (gx.double() - gref).abs().max().item() < 1e-5
    assert y.is_contiguous(memory_format=torch.channels_last)
    assert gx.is_contiguous(memory_format=torch.channels_last)


@needs_native
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_native_lrn_same_bits_for_any_thread_count(dtype):
    torch.manual_seed(0)
    x = _cl(torch.randn(8, 96, 13, 13).relu()).to(dtype).requires_grad_()
    g = _cl(torch.randn(8, 96, 13, 13)).to(dtype)
    threads = torch.get_num_threads()
    out = []
    try:
        for n in (1, 3):
            torch.set_num_threads(n)
            y = local_response_norm(x, groups=2)
            assert "Native" in type(y.grad_fn).__name__
            out.append([_bits(t) for t in (y, *torch.autograd.grad(y, x, g))])
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(out[0][0], out[1][0]) and torch.equal(out[0][1], out[1][1])


@needs_native
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("size,beta", [(5, 0.75), (5, 0.6), (4, 0.75)])
def test_native_lrn_blocks_of_rows_give_the_bits_of_single_rows(dtype, size, beta):
    # The kernel runs several pixels' rows back to back as one wide row; one pixel alone
    # takes its single-row path. Same arithmetic, so the same bits: for the paper's window
    # and beta (the fused loops), another beta (powf) and an even window.
    torch.manual_seed(0)
    x = _cl(torch.randn(2, 96, 5, 7) * 10).to(dtype)
    g = _cl(torch.randn(2, 96, 5, 7)).to(dtype)

    def run(xs, gs):
        xs = xs.detach().requires_grad_()
        y = local_response_norm(xs, size, 0.05, beta, 2.0, groups=2)
        assert "Native" in type(y.grad_fn).__name__
        return y, torch.autograd.grad(y, xs, gs)[0]

    y, gx = run(x, g)
    for i in range(5):
        for j in range(7):
            cut = (slice(None), slice(None), slice(i, i + 1), slice(j, j + 1))
            y1, gx1 = run(_cl(x[cut]), _cl(g[cut]))
            assert torch.equal(_bits(y1), _bits(y[cut])) and torch.equal(_bits(gx1), _bits(gx[cut]))


def test_kernel_error_codes_become_clear_errors():
    # 1: arguments the kernel refuses; 2: its malloc failed (the window masks).
    x = torch.zeros(256, 4)

    def refuses(*_):
        return 1

    def out_of_memory(*_):
        return 2

    with pytest.raises(ValueError, match="refuses rejected its arguments"):
        native.run_rows(refuses, 256, 16, [x])
    with pytest.raises(MemoryError, match="out_of_memory: out of memory"):
        native.run_rows(out_of_memory, 256, 16, [x])


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.detach().view(torch.int16 if t.element_size() == 2 else torch.int32)


# bf16 keeps 8 significant bits, so rounding to nearest has unit roundoff u = 2^-8: the
# bf16 kernel reads exact bf16 values, computes in float32 (relative error ~2^-20 for these
# few dozen operations) and rounds once, hence |y - ref| <= u |ref| + float32 error. Truncating
# instead, or rounding twice, reaches one ulp (2u) and fails. The gradient's float32 error is
# absolute: g d^-beta and the window term nearly cancel in places, so it is bounded by the
# terms' size (~max |ref|) times a generous 2^-16 rather than by |ref|.
BF16_U = 2.0**-8
BF16_RTOL = BF16_U + 2.0**-16
F32_ATOL_OF_MAX = 2.0**-16


def _bf16_vs_float64(y, gx, x, g, size, alpha, beta, k, groups) -> None:
    """y, gx (bf16) against the float64 op on the same bf16 x and g, within the bounds above."""
    xd = x.detach().double().requires_grad_()
    ref = local_response_norm(xd, size, alpha, beta, k, groups=groups)
    (gref,) = torch.autograd.grad(ref, xd, g.double())
    assert y.dtype == gx.dtype == torch.bfloat16
    err = (y.double() - ref).abs()
    assert (err <= BF16_RTOL * ref.abs()).all(), (err / ref.abs()).max().item()
    gerr = (gx.double() - gref).abs()
    bound = BF16_RTOL * gref.abs() + F32_ATOL_OF_MAX * gref.abs().max()
    assert (gerr <= bound).all(), (gerr - bound).max().item()


@needs_native
@pytest.mark.parametrize(
    "shape,groups,size,beta",
    [
        ((4, 96, 7, 9), 1, 5, 0.75),
        ((4, 96, 7, 9), 2, 5, 0.75),  # the paper's towers
        ((3, 10, 5, 5), 2, 4, 0.6),
        ((2, 7, 3, 3), 1, 3, 0.75),
    ],
)
def test_native_bf16_matches_float64_reference(shape, groups, size, beta):
    torch.manual_seed(0)
    x = _cl(torch.randn(shape) * 10).bfloat16().requires_grad_()
    g = _cl(torch.randn(shape)).bfloat16()
    y = local_response_norm(x, size, 0.05, beta, 2.0, groups=groups)
    assert y.grad_fn is not None and "Native" in type(y.grad_fn).__name__
    (gx,) = torch.autograd.grad(y, x, g)
    _bf16_vs_float64(y, gx, x, g, size, 0.05, beta, 2.0, groups)
    assert y.is_contiguous(memory_format=torch.channels_last)
    assert gx.is_contiguous(memory_format=torch.channels_last)


@needs_native
def test_native_bf16_is_the_fp32_kernel_rounded_to_nearest_even():
    # Same float32 arithmetic as the fp32 kernel on x.float(), then one round to nearest
    # even (PyTorch's .bfloat16()), bit for bit; the size makes exact ties occur.
    torch.manual_seed(0)
    x = _cl(torch.randn(16, 96, 27, 27) * 10).bfloat16().requires_grad_()
    g = _cl(torch.randn(16, 96, 27, 27)).bfloat16()
    y = local_response_norm(x, groups=2)
    (gx,) = torch.autograd.grad(y, x, g)
    xf = x.detach().float().requires_grad_()
    yf = local_response_norm(xf, groups=2)
    (gxf,) = torch.autograd.grad(yf, xf, g.float())
    assert "Native" in type(yf.grad_fn).__name__
    ties = [((_bits(t) & 0xFFFF) == 0x8000).sum().item() for t in (yf, gxf)]
    assert min(ties) > 0, ties
    assert torch.equal(_bits(y), _bits(yf.bfloat16()))
    assert torch.equal(_bits(gx), _bits(gxf.bfloat16()))


@needs_native
def test_native_bf16_special_values():
    # NaN and inf spread through the windows exactly as in float32; a NaN stays a NaN.
    torch.manual_seed(0)
    x = torch.randn(3, 8, 2, 2) * 10
    x[0, 3, 0, 0], x[1, 0, 1, 1], x[2, 7, 0, 1] = float("nan"), float("inf"), float("-inf")
    x[2, 2:5, 1, 0] = 0.0
    x = _cl(x).bfloat16().requires_grad_()
    g = _cl(torch.randn(3, 8, 2, 2)).bfloat16()
    y = local_response_norm(x, 5, 0.05, 0.75, 2.0)
    (gx,) = torch.autograd.grad(y, x, g)
    xf = x.detach().float().requires_grad_()
    yf = local_response_norm(xf, 5, 0.05, 0.75, 2.0)
    (gxf,) = torch.autograd.grad(yf, xf, g.float())
    for ours, ref in ((y, yf), (gx, gxf)):
        assert torch.equal(ours.isnan(), ref.isnan()) and ref.isnan().any()
        assert torch.equal(ours[~ref.isnan()].float(), ref[~ref.isnan()].bfloat16().float())


@needs_native
def test_native_bf16_under_autocast():
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(3, 96, 3, padding=1).to(memory_format=torch.channels_last)
    inp = _cl(torch.randn(2, 3, 9, 9) * 10)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        h = conv(inp)
        assert h.dtype == torch.bfloat16 and h.is_contiguous(memory_format=torch.channels_last)
        h = h.detach().requires_grad_()
        y = local_response_norm(h, groups=2)
        g = torch.randn_like(y)
        (gx,) = torch.autograd.grad(y, h, g)
    assert "Native" in type(y.grad_fn).__name__
    _bf16_vs_float64(y, gx, h, g, 5, 1e-4, 0.75, 2.0, 2)


def test_pytorch_path_for_other_layouts_and_dtypes():
    x = torch.randn(2, 8, 4, 4, requires_grad=True)
    assert "Native" not in type(local_response_norm(x).grad_fn).__name__  # NCHW
    xd = _cl(torch.randn(2, 8, 4, 4, dtype=torch.float64)).requires_grad_()
    assert "Native" not in type(local_response_norm(xd).grad_fn).__name__
    xm = _cl(torch.randn(2, 8, 4, 4)).requires_grad_()
    assert "Native" not in type(local_response_norm(xm, impl="matmul").grad_fn).__name__
    for low in (_cl(x.detach().half()), x.detach().bfloat16()):  # fp16; NCHW bf16
        y = local_response_norm(low.requires_grad_())
        assert y.dtype == low.dtype and type(y.grad_fn).__name__ == "ToCopyBackward0"
        assert "Native" not in type(y.grad_fn.next_functions[0][0]).__name__


def test_lrn_path_reports_the_dtype():
    assert native.lrn_path("cpu", torch.bfloat16, channels_last=False).startswith("PyTorch")
    assert native.lrn_path("cpu", torch.float16).startswith("PyTorch banded matmul in float32")
    assert native.lrn_path("cuda").startswith("PyTorch banded matmul in float32 (cuda tensors;")
    if native.library() is not None:
        assert native.lrn_path("cpu", torch.bfloat16) == (
            "fused C kernel, bfloat16, float32 math (with the ReLU before and max-pool after, if any)"
        )
        assert (
            native.lrn_path("cpu")
            == "fused C kernel, float32 (with the ReLU before and max-pool after, if any)"
        )
        assert "bfloat16" in native.status()


_PROBE = """
import torch
from alexnet.network import native
from alexnet.network.lrn import local_response_norm
print(native.status())
x = torch.randn(2, 8, 5, 5).contiguous(memory_format=torch.channels_last).requires_grad_()
y = local_response_norm(x)
y.sum().backward()
print(type(y.grad_fn).__name__, bool(torch.isfinite(x.grad).all()))
xb = x.detach().bfloat16().requires_grad_()
yb = local_response_norm(xb)
yb.sum().backward()
print(type(yb.grad_fn).__name__, yb.dtype, xb.grad.dtype, native.lrn_path("cpu", torch.bfloat16))
"""


def _probe(tmp_path, **env: str) -> list[str]:
    full = {k: v for k, v in os.environ.items() if k not in ("ALEXNET_NATIVE", "CC")}
    full.update(ALEXNET_CACHE=str(tmp_path / "cache"), **env)
    out = subprocess.run(
        [sys.executable, "-c", _PROBE], env=full, capture_output=True, text=True, check=True
    )
    return out.stdout.strip().splitlines()


def test_falls_back_when_the_compiler_fails(tmp_path):
    status, result, bf16 = _probe(tmp_path, CC=str(tmp_path / "no-such-cc"))
    assert status.startswith("native kernels off: compiling lrn.c failed")
    assert result == "_LRNFunctionBackward True"
    assert bf16.startswith("ToCopyBackward0 torch.bfloat16 torch.bfloat16 PyTorch banded")


def test_can_be_switched_off(tmp_path):
    status, result, bf16 = _probe(tmp_path, ALEXNET_NATIVE="0")
    assert status == "native kernels off: disabled by ALEXNET_NATIVE=0"
    assert result == "_LRNFunctionBackward True"
    assert bf16.startswith("ToCopyBackward0 torch.bfloat16 torch.bfloat16 PyTorch banded")


@needs_native
def test_build_is_cached_per_machine(tmp_path):
    status, result, bf16 = _probe(tmp_path)
    assert result == "_NativeLRNFunctionBackward True"
    assert bf16.startswith("_NativeLRNFunctionBackward torch.bfloat16 torch.bfloat16 fused C")
    (lib,) = (tmp_path / "cache").glob("alexnet-native-*.so")
    stamp = lib.stat().st_mtime_ns
    assert _probe(tmp_path)[0] == status  # second process: loads, does not rebuild
    assert lib.stat().st_mtime_ns == stamp
    assert not [p for p in (tmp_path / "cache").iterdir() if p != lib]  # no temp files left


def test_windows_wider_than_the_kernel_buffers_take_the_pytorch_path():
    # 8192 channels with a 101-wide window would overrun the C kernel's row buffers
    # (MAX_CHANNELS + 64 values): such layers must run PyTorch's path, with the same result.
    x = torch.randn(1, 8192, 2, 2).contiguous(memory_format=torch.channels_last)
    ours = local_response_norm(x, size=101, alpha=1e-4, beta=0.75, k=2.0)
    ref = torch.nn.functional.local_response_norm(x.contiguous(), 101, 1e-4, 0.75, 2.0)
    assert torch.allclose(ours, ref, atol=1e-5)


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal bits, NaNs included (a NaN's payload aside): -0 and +0 count as different."""
    nan = a.isnan()
    return torch.equal(nan, b.isnan()) and torch.equal(_bits(a)[~nan], _bits(b)[~nan])


@needs_native
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(
    "shape,groups,size,beta",
    [((3, 96, 7, 5), 2, 5, 0.75), ((2, 12, 5, 5), 3, 4, 0.6), ((1, 8, 2, 2), 1, 1, 0.75)],
)
def test_relu_folded_into_the_kernel_gives_the_bits_of_relu_then_lrn(
    dtype, shape, groups, size, beta
):
    # x is the pre-activation: the kernel's ReLU must be torch.relu exactly (-0 and NaN
    # pass, negatives become +0) and its gradient threshold_backward's (zero where x <= 0).
    torch.manual_seed(0)
    x = _cl(torch.randn(shape) * 3).to(dtype)
    x[0, :6, 0, 0] = torch.tensor([-0.0, float("nan"), 0.0, -1e-30, -2.0, 3.0]).to(dtype)
    g = _cl(torch.randn(shape)).to(dtype)
    a = x.clone().requires_grad_()
    y1 = local_response_norm(torch.relu(a), size, 0.05, beta, 2.0, groups=groups)
    (g1,) = torch.autograd.grad(y1, a, g)
    b = x.clone().requires_grad_()
    y2 = local_response_norm(b, size, 0.05, beta, 2.0, groups=groups, relu=True)
    assert "Native" in type(y2.grad_fn).__name__  # the fused kernel, not relu + kernel
    (g2,) = torch.autograd.grad(y2, b, g)
    assert _same(y1, y2) and _same(g1, g2)
    assert g2[0, 0, 0, 0] == 0 and g2[0, 4, 0, 0] == 0  # x = -0 and x < 0: no gradient


@pytest.mark.parametrize("channels_last", [True, False])
def test_relu_flag_on_every_path(channels_last):
    # Where the kernel does not apply (NCHW, float64, the exporters' pointwise form) the
    # flag is a separate ReLU in front: the same values either way.
    from alexnet.network.lrn import pointwise_only

    torch.manual_seed(0)
    x = torch.randn(2, 10, 4, 4, dtype=torch.float64)
    if channels_last:
        x = _cl(x)
    ref = local_response_norm(torch.relu(x), 5, groups=2)
    assert torch.equal(local_response_norm(x, 5, groups=2, relu=True), ref)
    with pointwise_only():
        out = local_response_norm(x, 5, groups=2, relu=True)
    assert torch.allclose(out.double(), ref, rtol=1e-6, atol=1e-7)  # computed in float32


@needs_native
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(
    "shape,groups,size,kernel,stride,ceil,relu",
    [
        ((3, 96, 13, 11), 2, 5, 3, 2, False, True),  # the paper's stages: 3/2 overlapping
        ((2, 24, 7, 7), 2, 5, 3, 2, True, True),  # the small variant's ceil mode
        ((2, 12, 9, 8), 3, 4, 2, 2, False, False),  # no ReLU (tanh models), even window
        ((2, 10, 6, 7), 1, 3, 3, 1, True, True),  # stride 1: up to 9 windows per input
        ((1, 96, 3, 100), 2, 5, 3, 2, False, True),  # a row wider than the kernel's buffer
    ],
)
def test_lrn_and_max_pool_in_one_kernel_give_the_bits_of_the_separate_ops(
    dtype, shape, groups, size, kernel, stride, ceil, relu
):
    # max_pool2d's own rules must hold bit for bit: the first of equal values wins (the
    # ReLU's zeros tie everywhere), NaN wins, and an input's gradient is summed in the
    # storage type over the windows whose max it is, in their order. (_same: NaN where the
    # separate ops give NaN; in bf16 PyTorch rewrites NaN bit patterns, the kernel not.)
    from torch import nn

    from alexnet.network.lrn import LocalResponseNorm

    torch.manual_seed(0)
    x = _cl(torch.randn(shape) * 3).to(dtype)
    x[0, :6, 0, 0] = torch.tensor([-0.0, float("nan"), 0.0, -1e-30, -2.0, 3.0]).to(dtype)
    norm = LocalResponseNorm(size, 0.05, 0.75, 2.0, groups=groups)
    pool = nn.MaxPool2d(kernel, stride, ceil_mode=ceil)
    assert norm.fuses_pool(x, pool)
    a = x.clone().requires_grad_()
    z1 = pool(norm(torch.relu(a) if relu else a))
    g = _cl(torch.randn(z1.shape)).to(dtype)
    g[0, 0, 0, 0] = float("nan")
    (g1,) = torch.autograd.grad(z1, a, g)
    b = x.clone().requires_grad_()
    z2 = norm.pooled(b, pool, relu=relu)
    assert "Pool" in type(z2.grad_fn).__name__
    (g2,) = torch.autograd.grad(z2, b, g)
    assert z2.shape == z1.shape and z2.is_contiguous(memory_format=torch.channels_last)
    assert _same(z1, z2) and _same(g1, g2)


@needs_native
def test_lrn_pool_same_bits_for_any_thread_count():
    # Threads split output rows (forward) and input rows (backward); a thread recomputes the
    # LRN row it shares with its neighbour rather than reading the neighbour's.
    from torch import nn

    from alexnet.network.lrn import LocalResponseNorm

    torch.manual_seed(0)
    x = _cl(torch.randn(3, 16, 15, 15)).bfloat16().requires_grad_()
    norm, pool = LocalResponseNorm(groups=2), nn.MaxPool2d(3, 2)
    g = _cl(torch.randn(3, 16, 7, 7)).bfloat16()
    threads = torch.get_num_threads()
    out = []
    try:
        for n in (1, 4):
            torch.set_num_threads(n)
            z = norm.pooled(x, pool, relu=True)
            assert "Pool" in type(z.grad_fn).__name__  # the fused kernel, not the fallback
            out.append([_bits(t) for t in (z, *torch.autograd.grad(z, x, g))])
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(out[0][0], out[1][0]) and torch.equal(out[0][1], out[1][1])


def test_pools_the_fused_kernel_does_not_take_run_as_separate_ops():
    from torch import nn

    from alexnet.network.lrn import LocalResponseNorm, pool_fusable

    assert pool_fusable(nn.MaxPool2d(3, 2)) == (3, 2)
    assert pool_fusable(nn.MaxPool2d(2)) == (2, 2)  # stride defaults to the kernel
    for other in (
        nn.MaxPool2d(3, 2, padding=1),
        nn.MaxPool2d((3, 2), 2),
        nn.MaxPool2d(3, 2, dilation=2),
        nn.MaxPool2d(3, 2, return_indices=True),
        nn.MaxPool2d(16, 1),  # the argmax's place would not fit a byte
        nn.AvgPool2d(3, 2),
    ):
        assert pool_fusable(other) is None
    norm = LocalResponseNorm()
    x = _cl(torch.randn(2, 8, 7, 7))
    pool = nn.MaxPool2d(3, 2, padding=1)
    assert torch.equal(norm.pooled(x, pool), pool(norm(x)))
    # Bad groups: the LRN's own message, not the kernel's error code.
    with pytest.raises(ValueError, match="8 channels do not split into 3 LRN groups"):
        LocalResponseNorm(groups=3).pooled(x, nn.MaxPool2d(3, 2))
    with pytest.raises(ValueError, match="groups must be >= 1"):
        LocalResponseNorm(groups=0)
