"""Local response normalization (§3.3), with a hand-written backward.

    b[i] = a[i] / (k + alpha' * sum_{j in W(i)} a[j]^2) ** beta

W(i) is the window of n channels around channel i, clipped at the edges. ``alpha'`` is
``alpha / n`` under the ``"mean"`` convention (what cuda-convnet, Caffe and
``torch.nn.functional.local_response_norm`` compute) and ``alpha`` under ``"sum"`` (the
formula as printed in the paper). The two differ by a factor n = 5 in alpha.

Why not PyTorch's own: it pads, stacks and runs ``avg_pool3d`` over a 5-D view, which is
slow on CPU and has a non-deterministic CUDA backward. Here the channel-window sum is one
small banded matrix product (deterministic, vectorised, works for NCHW and channels_last),
and the backward is the closed form

    dL/da[j] = g[j] * d[j]^-beta - 2 beta alpha' a[j] * sum_{i: j in W(i)} g[i] b[i] / d[i]

with d = k + alpha' * sum a^2, so the whole op is a handful of memory passes.

On that kernel's path the model also folds in the ReLU before LRN and the max-pool after
it (``relu=True``, :meth:`LocalResponseNorm.pooled`): the same bits as the separate ops.

Precision: everything is computed in float32 (or float64 for float64 inputs), never in
autocast's lower precision. bf16 channels_last CPU tensors go to the fused C kernel, which
reads and writes bf16 and computes in float32; other bf16/fp16 inputs are upcast for the
PyTorch path and the result cast back.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import os
import warnings
from collections.abc import Iterator
from typing import Any, Literal

import torch
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from . import native

AlphaConvention = Literal["mean", "sum"]


def _window_matrix(
    channels: int, size: int, device: torch.device, dtype: torch.dtype, groups: int = 1
) -> Tensor:
    """Band matrix M (C x C) with M[i, j] = 1 when channel j lies in the window of channel i.

    The window is [i - size // 2, i + (size - 1) // 2], the same (asymmetric for even sizes)
    window PyTorch's local_response_norm uses. With ``groups`` the window never crosses a
    group boundary (block-diagonal M): each tower normalises its own kernel maps, as on the
    paper's two GPUs.
    """
    idx = torch.arange(channels, device=device)
    offset = idx.view(1, -1) - idx.view(-1, 1)  # j - i
    band = (offset >= -(size // 2)) & (offset <= (size - 1) // 2)
    if groups > 1:
        group = idx // (channels // groups)
        band &= group.view(1, -1) == group.view(-1, 1)
    return band.to(dtype)


def _window_sum(t: Tensor, band: Tensor) -> Tensor:
    """sum_{j in W(i)} t[:, j] for every channel i, as one matmul over the channel dim."""
    n, c, h, w = t.shape
    if t.is_contiguous(memory_format=torch.channels_last) and not t.is_contiguous():
        # (N, H, W, C) @ M^T: a plain GEMM over contiguous rows of C values.
        out = t.permute(0, 2, 3, 1).reshape(-1, c) @ band.t()
        return out.view(n, h, w, c).permute(0, 3, 1, 2)
    out = torch.matmul(band, t.reshape(n, c, h * w))  # (C, C) @ (N, C, HW)
    return out.view(n, c, h, w)


def _inv_pow_(d: Tensor, beta: float, out: Tensor) -> Tensor:
    """out = d ** -beta; beta = 0.75 (the paper's) as rsqrt(d) * sqrt(rsqrt(d)), faster than pow."""
    if beta == 0.75:
        torch.rsqrt(d, out=out)
        return out.mul_(torch.sqrt(out))
    return torch.pow(d, -beta, out=out)


def _check_groups(x: Tensor, groups: int) -> None:
    if x.shape[1] % groups:
        raise ValueError(f"{x.shape[1]} channels do not split into {groups} LRN groups")


def _alpha_per_term(alpha: float, size: int, convention: AlphaConvention) -> float:
    """alpha' of the formula: alpha / n under "mean", alpha as printed under "sum"."""
    return alpha / size if convention == "mean" else alpha


def _autocast_off(device: torch.device) -> contextlib.AbstractContextManager[object]:
    """Autocast would run the window-sum matmul in bf16/fp16; the sum must stay in x's dtype."""
    if torch.amp.is_autocast_available(device.type):
        return torch.autocast(device.type, enabled=False)
    return contextlib.nullcontext()


class _LRNFunction(torch.autograd.Function):
    # Every pass after the first few is in place: on CPU a fresh large tensor costs far more
    # (page faults on first touch) than the arithmetic on it.
    @staticmethod
    def forward(
        ctx, x: Tensor, size: int, alpha: float, beta: float, k: float, groups: int
    ) -> Tensor:  # type: ignore[override]
        with _autocast_off(x.device):
            band = _window_matrix(x.shape[1], size, x.device, x.dtype, groups)
            sq = x * x
            d = _window_sum(sq, band.mul_(alpha)).add_(k)  # k + alpha' * sum of squares
            inv = _inv_pow_(d, beta, out=sq)  # reuses the squares' memory
            y = x * inv
        ctx.save_for_backward(x, d, inv, y, band)
        ctx.scale = 2.0 * beta
        return y

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        x, d, inv, y, band = ctx.saved_tensors
        # A backward called inside an autocast region would otherwise autocast too.
        with _autocast_off(x.device):
            grad = grad.contiguous(memory_format=_memory_format(x))
            # t[i] = g[i] * b[i] / d[i]; channel j collects t from every i whose window
            # holds j (the transposed band, already scaled by alpha').
            t = (grad * y).div_(d)
            s = _window_sum(t, band.t().contiguous())
            gx = torch.mul(grad, inv, out=t)  # t is no longer needed
            gx = gx.sub_(s.mul_(x), alpha=ctx.scale)
        return gx, None, None, None, None, None


class _NativeLRNFunction(torch.autograd.Function):
    """The same op as one fused C pass each way (``native/lrn.c``); channels_last float32
    or bfloat16 on CPU. bf16 stays bf16 in memory (half the traffic) and is computed in
    float32, rounded once per output: the fp32 kernel's result on x.float(), rounded.

    Only x is saved: the backward recomputes the window sums, which costs less than
    writing and re-reading the three intermediates the PyTorch path keeps.

    With ``relu`` x is the pre-activation and the op is LRN(relu(x)), the ReLU folded into
    both passes (same bits as the two ops, two fewer passes over the tensor each way).
    """

    @staticmethod
    def forward(
        ctx, x: Tensor, size: int, alpha: float, beta: float, k: float, groups: int, relu: bool
    ) -> Tensor:  # type: ignore[override]
        fns = native.kernels(x.dtype)
        assert fns is not None
        y = torch.empty_like(x)
        n, c, h, w = x.shape
        args = (ctypes.c_int(c), ctypes.c_int(groups), ctypes.c_int(size))
        consts = (ctypes.c_float(alpha), ctypes.c_float(beta), ctypes.c_float(k))
        consts += (ctypes.c_int(int(relu)),)
        native.run_rows(fns[0], n * h * w, c * x.element_size(), [x, y], *args, *consts)
        ctx.save_for_backward(x)
        ctx.args, ctx.consts = args, consts
        return y

    @staticmethod
    @once_differentiable  # the C backward has no backward: double backward is an error
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        (x,) = ctx.saved_tensors
        fns = native.kernels(x.dtype)
        assert fns is not None
        # The kernel reads grad as raw memory in x's row layout and element type.
        grad = grad.to(x.dtype).contiguous(memory_format=torch.channels_last)
        gx = torch.empty_like(x)
        n, c, h, w = x.shape
        rows, row_bytes = n * h * w, c * x.element_size()
        native.run_rows(fns[1], rows, row_bytes, [x, grad, gx], *ctx.args, *ctx.consts)
        return gx, None, None, None, None, None, None


@torch.compiler.disable  # a ctypes call: torch.compile runs it eagerly, between graphs
def _native_lrn(
    x: Tensor, size: int, alpha: float, beta: float, k: float, groups: int, relu: bool = False
) -> Tensor:
    return _NativeLRNFunction.apply(x, size, alpha, beta, k, groups, relu)


class _NativeLRNPoolFunction(torch.autograd.Function):
    """LRN (of relu(x) with ``relu``) then max pooling, one C pass each way
    (``native/lrn.c``, "LRN followed by max pooling"): the LRN's full-size output, the
    pooling indices (int64 in PyTorch) and the zero-filled gradient between them are never
    made. Saves x and a byte per pooled value (the argmax's place in its window)."""

    @staticmethod
    def forward(
        ctx,
        x: Tensor,
        size: int,
        alpha: float,
        beta: float,
        k: float,
        groups: int,
        relu: bool,
        kernel: int,
        stride: int,
        ceil_mode: bool,
    ) -> Tensor:  # type: ignore[override]
        fns = native.pool_kernels(x.dtype)
        assert fns is not None
        n, c, h, w = x.shape
        ho, wo = _pooled_size(h, w, kernel, stride, ceil_mode)
        z = torch.empty((n, c, ho, wo), dtype=x.dtype, memory_format=torch.channels_last)
        arg = torch.empty((n, ho, wo, c), dtype=torch.uint8)
        ints = [ctypes.c_int(v) for v in (h, w, c, groups, size)]
        consts = (ctypes.c_float(alpha), ctypes.c_float(beta), ctypes.c_float(k))
        pool = [ctypes.c_int(v) for v in (int(relu), kernel, stride, ho, wo)]
        native.run_units(fns[0], n * ho, [x, z, arg], *ints, *consts, *pool)
        ctx.save_for_backward(x, arg)
        ctx.args = (*ints, *consts, *pool)
        return z

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        x, arg = ctx.saved_tensors
        fns = native.pool_kernels(x.dtype)
        assert fns is not None
        grad = grad.to(x.dtype).contiguous(memory_format=torch.channels_last)
        gx = torch.empty_like(x)
        n, _, h, _ = x.shape
        native.run_units(fns[1], n * h, [x, grad, arg, gx], *ctx.args)
        return (gx,) + (None,) * 9


@functools.lru_cache(maxsize=64)  # called every forward: the few shapes a model sees
def _pooled_size(h: int, w: int, kernel: int, stride: int, ceil_mode: bool) -> tuple[int, int]:
    """max_pool2d's output side (PyTorch's rule, ceil mode included), from a meta tensor."""
    probe = torch.empty(1, 1, h, w, device="meta")
    out = nn.functional.max_pool2d(probe, kernel, stride, ceil_mode=ceil_mode)
    return out.shape[2], out.shape[3]


@torch.compiler.disable  # a ctypes call, as _native_lrn
def _native_lrn_pool(x: Tensor, *args: Any) -> Tensor:
    return _NativeLRNPoolFunction.apply(x, *args)


# The fused kernel keeps the argmax's place in a pooling window in one byte (native/lrn.c).
_NATIVE_MAX_POOL_KERNEL = 15


def pool_fusable(pool: nn.Module) -> tuple[int, int] | None:
    """(kernel, stride) of a max pool the fused LRN + pool kernel computes (square,
    unpadded, no dilation, no indices returned, kernel <= 15), else None."""
    if type(pool) is not nn.MaxPool2d or pool.return_indices:  # a subclass may differ
        return None
    pair = nn.modules.utils._pair
    k, s = pair(pool.kernel_size), pair(pool.stride or pool.kernel_size)
    if pair(pool.padding) != (0, 0) or pair(pool.dilation) != (1, 1):
        return None
    if k[0] != k[1] or s[0] != s[1] or k[0] > _NATIVE_MAX_POOL_KERNEL:
        return None
    return k[0], s[0]


# The C kernel's per-row buffers (native/lrn.c: MAX_CHANNELS, and 64 more for the window).
_NATIVE_MAX_CHANNELS, _NATIVE_MAX_WINDOW_PAD = 8192, 64


def _use_native(x: Tensor, size: int, groups: int) -> bool:
    """channels_last float32/bfloat16 CPU tensors whose rows fit the kernel's buffers, when
    the kernels compiled."""
    return (
        x.device.type == "cpu"
        and x.shape[1] <= _NATIVE_MAX_CHANNELS
        and 1 <= size <= _NATIVE_MAX_WINDOW_PAD + 1
        and x.is_contiguous(memory_format=torch.channels_last)
        and native.kernels(x.dtype) is not None
    )


def fuses_relu(x: Tensor, size: int, groups: int) -> bool:
    """Whether ``local_response_norm(x, ..., relu=True)`` runs the ReLU inside the C kernel
    (the fused path), rather than as a separate op in front of it."""
    return not _POINTWISE_ONLY and _use_native(x, size, groups)


def _window_sum_shifted(t: Tensor, size: int, groups: int) -> Tensor:
    """The window sum as ``size`` shifted slices of the channel-padded tensor: pointwise
    work a compiler fuses into one pass (the banded matmul is a GEMM it cannot fuse)."""
    n, c, h, w = t.shape
    lo, hi = size // 2, (size - 1) // 2
    g = t.view(n, groups, c // groups, h, w)  # windows never cross a group boundary
    p = nn.functional.pad(g, (0, 0, 0, 0, lo, hi))
    out = p[:, :, 0 : c // groups]
    for i in range(1, size):
        out = out + p[:, :, i : i + c // groups]
    return out.view(n, c, h, w)


def lrn_pointwise(
    x: Tensor, size: int, alpha: float, beta: float, k: float, groups: int = 1
) -> Tensor:
    """LRN written as pointwise work on float32 (``alpha`` already per the "sum"
    convention), for accelerators under torch.compile: one fused kernel forward and one
    backward (autograd through Inductor), reading bf16 in and writing bf16 out."""
    xf = x.float()
    d = _window_sum_shifted(xf * xf, size, groups) * alpha + k
    return (xf * d.pow(-beta)).to(x.dtype)


_POINTWISE_ONLY = 0  # > 0 inside pointwise_only()


@contextlib.contextmanager
def pointwise_only() -> Iterator[None]:
    """Every LRN in this block runs :func:`lrn_pointwise`: plain tensor operators that
    exporters (ONNX, torch.export) can trace, where the C kernel and the hand-written
    backward cannot be."""
    global _POINTWISE_ONLY
    _POINTWISE_ONLY += 1
    try:
        yield
    finally:
        _POINTWISE_ONLY -= 1


_compiled: Any = None  # torch.compile(lrn_pointwise), built on first use
_compile_failed: str | None = None


def triton_available() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def _use_triton(x: Tensor) -> bool:
    """GPU tensors with ``ALEXNET_LRN_TRITON=1``: the fused Triton kernels
    (:mod:`alexnet.network.lrn_triton`; experimental, their speed not yet measured)."""
    return (
        x.device.type == "cuda"
        and os.environ.get("ALEXNET_LRN_TRITON", "0") == "1"
        and triton_available()
    )


def _compile_opted_in() -> bool:
    return os.environ.get("ALEXNET_LRN_COMPILE", "0") == "1"


def _use_compiled(x: Tensor) -> bool:
    """Inference on accelerator tensors with ``ALEXNET_LRN_COMPILE=1``, where torch.compile
    has Triton. Measured on an H100 (benchmarks/README.md): the compiled form made the
    paper's net 1.3-1.4x faster in inference but 1.5x slower in training (Inductor's fused
    backward recomputes the window sums), so it never runs under autograd; and it is opt-in,
    since compiling costs seconds per new input shape (a few images to predict would wait)."""
    if x.device.type == "cpu" or not _compile_opted_in() or _compile_failed is not None:
        return False
    if torch.is_grad_enabled() and x.requires_grad:
        return False
    try:
        from torch.utils._triton import has_triton
    except ImportError:
        return False
    return bool(has_triton())


def _compiled_lrn(x: Tensor, size: int, alpha: float, beta: float, k: float, groups: int) -> Tensor:
    global _compiled, _compile_failed
    if _compiled is None:
        _compiled = torch.compile(lrn_pointwise, fullgraph=True)
    try:
        return _compiled(x, size, alpha, beta, k, groups)
    except Exception as err:  # a compiler failure must not stop training: fall back, once
        _compile_failed = f"{type(err).__name__}: {err}"[:300]
        warnings.warn(
            f"compiled LRN failed ({_compile_failed}); using the banded matmul", stacklevel=2
        )
        return local_response_norm(x, size, alpha, beta, k, "sum", groups, impl="matmul")


def compiled_lrn_status(device: torch.device | str) -> str | None:
    """Why the compiled inference path is off on ``device``, or None when it runs there."""
    dev = torch.device(device)
    if dev.type == "cpu":
        return "cpu tensors"
    if not _compile_opted_in():
        return "ALEXNET_LRN_COMPILE=1 compiles it for inference"
    if _compile_failed is not None:
        return f"compile failed: {_compile_failed}"
    try:
        from torch.utils._triton import has_triton
    except ImportError:
        return "no Triton for torch.compile"
    return None if has_triton() else "no Triton for torch.compile"


def _memory_format(x: Tensor) -> torch.memory_format:
    if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
        return torch.channels_last
    return torch.contiguous_format


def local_response_norm(
    x: Tensor,
    size: int = 5,
    alpha: float = 1e-4,
    beta: float = 0.75,
    k: float = 2.0,
    alpha_convention: AlphaConvention = "mean",
    groups: int = 1,
    impl: Literal["fast", "matmul", "triton"] = "fast",
    relu: bool = False,
) -> Tensor:
    """LRN across channels of an (N, C, H, W) tensor; see the module docstring.

    ``relu=True`` normalises ``relu(x)`` instead: one fused pass each way on the C kernel's
    path (:func:`fuses_relu`), a separate ReLU (not in place) on every other path.

    ``impl="fast"`` runs the fused C kernel for channels_last float32 and bfloat16 CPU
    tensors when it is available (:mod:`alexnet.network.native`), the banded-matmul PyTorch
    path otherwise (GPUs: 2x PyTorch's LRN on an H100), or, for inference on GPUs with
    ``ALEXNET_LRN_COMPILE=1``, the pointwise form compiled by torch.compile
    (:func:`lrn_pointwise`); ``"matmul"`` always takes the banded-matmul path.

    Low-precision inputs (bf16/fp16 under autocast) are normalised in float32 and cast
    back: x^2 sums of fp16 overflow and bf16 loses the k + alpha * s term's precision. The
    result and the input gradient keep x's dtype; autocast never lowers the inner math.
    """
    if x.dim() != 4:
        raise ValueError(f"local_response_norm expects (N, C, H, W), got shape {tuple(x.shape)}")
    if alpha_convention not in ("mean", "sum"):
        raise ValueError(f"alpha_convention must be 'mean' or 'sum', got {alpha_convention!r}")
    _check_groups(x, groups)
    a = _alpha_per_term(alpha, size, alpha_convention)
    if relu and not (impl == "fast" and fuses_relu(x, size, groups)):
        x = torch.relu(x)
    if _POINTWISE_ONLY:
        return lrn_pointwise(x, size, a, beta, k, groups)
    x = x.contiguous(memory_format=_memory_format(x))
    if impl == "fast" and _use_native(x, size, groups):
        return _native_lrn(x, size, a, beta, k, groups, relu)
    if impl == "triton" or (impl == "fast" and _use_triton(x)):
        from .lrn_triton import triton_lrn

        return triton_lrn(x, size, a, beta, k, groups)
    if impl == "fast" and _use_compiled(x):
        return _compiled_lrn(x, size, a, beta, k, groups)
    if x.dtype in (torch.float16, torch.bfloat16):
        # .float() keeps the layout; the cast back is outside _LRNFunction, so autograd
        # hands the upcast gradient back to x in x's dtype.
        return _LRNFunction.apply(x.float(), size, a, beta, k, groups).to(x.dtype)
    return _LRNFunction.apply(x, size, a, beta, k, groups)


class LocalResponseNorm(nn.Module):
    """§3.3 LRN: k=2, n=5, alpha=1e-4, beta=0.75 by default (the paper's constants)."""

    def __init__(
        self,
        size: int = 5,
        alpha: float = 1e-4,
        beta: float = 0.75,
        k: float = 2.0,
        alpha_convention: AlphaConvention = "mean",
        impl: Literal["fast", "matmul", "torch", "triton"] = "fast",
        groups: int = 1,
    ) -> None:
        super().__init__()
        if impl not in ("fast", "matmul", "torch", "triton"):
            raise ValueError(
                f"LRN impl must be 'fast', 'matmul', 'torch' or 'triton', got {impl!r}"
            )
        if size < 1:
            raise ValueError(f"LRN size must be >= 1, got {size}")
        if groups < 1:
            raise ValueError(f"LRN groups must be >= 1, got {groups}")
        if alpha_convention not in ("mean", "sum"):
            raise ValueError(f"alpha_convention must be 'mean' or 'sum', got {alpha_convention!r}")
        self.size, self.alpha, self.beta, self.k = size, alpha, beta, k
        self.alpha_convention: AlphaConvention = alpha_convention
        # "fast": the fused C kernel where it applies, else the banded matmul; "matmul": the
        # banded matmul always; "torch": torch.nn.functional.local_response_norm, kept as the
        # reference side of tests and `alexnet benchmark lrn`; "triton": the fused GPU
        # kernels (experimental; "fast" takes them on GPUs with ALEXNET_LRN_TRITON=1).
        self.impl = impl
        self.groups = groups

    def fuses_relu(self, x: Tensor) -> bool:
        """Whether ``self(x, relu=True)`` folds the ReLU into the C kernel for input x."""
        return self.impl == "fast" and fuses_relu(x, self.size, self.groups)

    def fuses_pool(self, x: Tensor, pool: nn.Module) -> bool:
        """Whether :meth:`pooled` runs as the one fused C kernel for x and ``pool``."""
        ks = pool_fusable(pool)
        return (
            ks is not None
            and self.fuses_relu(x)
            and native.pool_kernels(x.dtype) is not None
            and min(x.shape[2], x.shape[3]) >= ks[0]
        )

    def pooled(self, x: Tensor, pool: nn.MaxPool2d, relu: bool = False) -> Tensor:
        """``pool(self(x, relu=relu))``, in one pass each way where :meth:`fuses_pool`."""
        if x.dim() == 4:
            _check_groups(x, self.groups)
        if not self.fuses_pool(x, pool):
            return pool(self(x, relu=relu))
        kernel, stride = pool_fusable(pool)  # type: ignore[misc]
        a = _alpha_per_term(self.alpha, self.size, self.alpha_convention)
        return _native_lrn_pool(
            x, self.size, a, self.beta, self.k, self.groups, relu, kernel, stride, pool.ceil_mode
        )

    def forward(self, x: Tensor, relu: bool = False) -> Tensor:
        """LRN of x, or of relu(x) with ``relu=True`` (see :func:`local_response_norm`)."""
        if self.impl == "torch":
            x = torch.relu(x) if relu else x
            n = self.size
            alpha = self.alpha if self.alpha_convention == "mean" else self.alpha * n
            if self.groups > 1:
                return torch.cat(
                    [
                        nn.functional.local_response_norm(c, n, alpha, self.beta, self.k)
                        for c in x.chunk(self.groups, 1)
                    ],
                    1,
                )
            return nn.functional.local_response_norm(x, n, alpha, self.beta, self.k)
        return local_response_norm(
            x,
            self.size,
            self.alpha,
            self.beta,
            self.k,
            self.alpha_convention,
            self.groups,
            impl=self.impl,  # type: ignore[arg-type]
            relu=relu,
        )

    def extra_repr(self) -> str:
        return (
            f"size={self.size}, alpha={self.alpha}, beta={self.beta}, k={self.k}, "
            f"alpha_convention={self.alpha_convention!r}, groups={self.groups}"
        )
