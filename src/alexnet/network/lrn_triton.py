"""LRN (§3.3) as two fused Triton kernels for GPUs: one pass forward, one backward.

Each kernel reads a tile of channels_last rows (all C channels of BLOCK_R pixels) and
computes the channel-window sums from shifted loads of the same cached row; the backward
recomputes the forward's sums rather than saving them, so memory traffic is the minimum:
x in, y out forward; x and the gradient in, the input gradient out backward. bf16 and fp16
are read and written as such and computed in float32.

Experimental and opt-in (``ALEXNET_LRN_TRITON=1``): its values and gradients are tested
(on CPU through Triton's interpreter), its speed has not been measured on a GPU yet
(``alexnet benchmark lrn --device cuda`` times it beside the default).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor


@triton.jit
def _window_sum(X, base, cols, rmask, C, CG, alpha, k, SIZE: tl.constexpr, SHIFT: tl.constexpr):
    """k + alpha * sum of squares over the window of channel ``cols + SHIFT``."""
    centre = cols + SHIFT
    s = tl.zeros(centre.shape, tl.float32)
    for e in tl.static_range(SIZE):
        cc = centre + (e - SIZE // 2)
        m = rmask & (centre >= 0) & (centre < C) & (cc >= 0) & (cc < C)
        m = m & ((cc // CG) == (centre // CG))  # windows stay inside their tower
        v = tl.load(X + base + cc, mask=m, other=0.0).to(tl.float32)
        s += v * v
    return k + alpha * s


@triton.jit
def _tile(R, C, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):
    """This program's tile: BLOCK_R channels_last rows of all C channels; (channel
    indices, row mask, tile mask, row offsets)."""
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)[:, None]
    cols = tl.arange(0, BLOCK_C)[None, :]
    rmask = rows < R
    return cols, rmask, rmask & (cols < C), rows.to(tl.int64) * C


@triton.jit
def _lrn_forward(X, Y, R, C, CG, alpha, beta, k, SIZE: tl.constexpr, BLOCK_R: tl.constexpr,
                 BLOCK_C: tl.constexpr):  # fmt: skip
    cols, rmask, mask, base = _tile(R, C, BLOCK_R, BLOCK_C)
    x = tl.load(X + base + cols, mask=mask, other=0.0).to(tl.float32)
    d = _window_sum(X, base, cols, rmask, C, CG, alpha, k, SIZE, 0)
    y = x * tl.exp2(-beta * tl.log2(d))
    tl.store(Y + base + cols, y.to(Y.dtype.element_ty), mask=mask)


@triton.jit
def _lrn_backward(X, G, GX, R, C, CG, alpha, beta, k, SIZE: tl.constexpr,
                  BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):  # fmt: skip
    """gx_c = g_c d_c^-b - 2 a b x_c sum_{j: c in W(j)} g_j x_j d_j^(-b-1)."""
    cols, rmask, mask, base = _tile(R, C, BLOCK_R, BLOCK_C)
    x = tl.load(X + base + cols, mask=mask, other=0.0).to(tl.float32)
    g = tl.load(G + base + cols, mask=mask, other=0.0).to(tl.float32)
    d = _window_sum(X, base, cols, rmask, C, CG, alpha, k, SIZE, 0)
    gx = g * tl.exp2(-beta * tl.log2(d))
    acc = tl.zeros([BLOCK_R, BLOCK_C], tl.float32)
    # c is in W(j) = [j - SIZE//2, j + (SIZE-1)//2] for j in [c - (SIZE-1)//2, c + SIZE//2]
    for e in tl.static_range(SIZE):
        shift = e - (SIZE - 1) // 2
        j = cols + shift
        mj = mask & (j >= 0) & (j < C) & ((j // CG) == (cols // CG))
        xj = tl.load(X + base + j, mask=mj, other=0.0).to(tl.float32)
        gj = tl.load(G + base + j, mask=mj, other=0.0).to(tl.float32)
        dj = _window_sum(X, base, cols, rmask, C, CG, alpha, k, SIZE, shift)
        acc += tl.where(mj, gj * xj * tl.exp2((-beta - 1.0) * tl.log2(dj)), 0.0)
    gx -= 2.0 * alpha * beta * x * acc
    tl.store(GX + base + cols, gx.to(GX.dtype.element_ty), mask=mask)


def _launch(kernel, n, c, groups, *tensors, alpha, beta, k, size) -> None:  # type: ignore[no-untyped-def]
    block_c = triton.next_power_of_2(c)
    block_r = max(1, 4096 // block_c)
    rows = n
    grid = (triton.cdiv(rows, block_r),)
    kernel[grid](*tensors, rows, c, c // groups, alpha, beta, k, SIZE=size, BLOCK_R=block_r,
                 BLOCK_C=block_c)  # fmt: skip


class TritonLRNFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, size: int, alpha: float, beta: float, k: float, groups: int):  # type: ignore[override]
        n, c, h, w = x.shape
        x = x.contiguous(memory_format=torch.channels_last)
        y = torch.empty_like(x)
        _launch(_lrn_forward, n * h * w, c, groups, x, y, alpha=alpha, beta=beta, k=k, size=size)
        ctx.save_for_backward(x)
        ctx.args = (size, alpha, beta, k, groups)
        return y

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        (x,) = ctx.saved_tensors
        size, alpha, beta, k, groups = ctx.args
        n, c, h, w = x.shape
        grad = grad.contiguous(memory_format=torch.channels_last)
        gx = torch.empty_like(x)
        _launch(_lrn_backward, n * h * w, c, groups, x, grad, gx, alpha=alpha, beta=beta, k=k,
                size=size)  # fmt: skip
        return gx, None, None, None, None, None


def triton_lrn(x: Tensor, size: int, alpha: float, beta: float, k: float, groups: int) -> Tensor:
    """LRN of an (N, C, H, W) tensor (``alpha`` per window element, the "sum" convention
    applied by the caller): bf16/fp16 in and out, float32 math."""
    return TritonLRNFunction.apply(x, size, alpha, beta, k, groups)
