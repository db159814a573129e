"""Stride-1 "same" convolution in the Fourier domain, with a hand-written backward.

In the frequency domain each (input, output) channel pair of a convolution costs one
complex product per frequency instead of k*k multiply-adds per pixel: for conv2 of
AlexNet (5x5 kernels, 27x27 maps, S = 29) 435 complex products against 18,225
multiply-adds, for conv3-conv5 (3x3, 13x13, S = 14) 112 against 1,521. What remains is
moving between the two domains, and that is where this implementation differs from the
textbook FFT one: the maps are small, so the transforms are dense DFT matrices applied as
GEMMs along each spatial axis of a (H, W, group, N, C/g) layout. Every step is then one
large matrix product on contiguous data; the batch and channels stay the innermost
dimensions throughout, so the only layout changes are one copy in and one copy out of
channels_last. (An rfft2-based version was as fast on conv2 but slower than oneDNN on the
3x3 layers in development timings; this one is 1.4-1.7x faster there, `alexnet benchmark
conv`, figures in benchmarks/README.md.)

Mathematically this is the same convolution (cross-correlation, zero padding) as
``torch.nn.functional.conv2d``; results agree to float32 rounding (~1e-6 relative).

One layer, batch N, C -> O channels in g groups, H x W maps, k x k kernels, padding p:
    S  = H + max(p, k - 1 - p)                   what wraps around lands on zero padding
    X  = E2 (E1 x)          (S, S/2+1, g, N, C/g)  half spectrum (x is real)
    K  = Eb w               (S, S/2+1, g, C/g, O/g)  conj. weight spectrum, taps at u - p
    Y  = X @ K              one GEMM per frequency
    y  = Re(I2 (I1 Y)) + b  only the H x W outputs are computed
E1/E2 are the forward DFT along W and H restricted to the H x W input positions, I1/I2
the inverse restricted to the outputs (I2 carries the 1/S^2 and the x2 of the half
spectrum's omitted mirror columns). The backward is the adjoint of the same chain:
gradients of x through K^H, of w through X^H G and Eb's adjoint.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

_MATS: dict[tuple[int, ...], tuple[Tensor, ...]] = {}


def spectrum_side(size: int, kernel: int, padding: int) -> int:
    """The smallest DFT side S for which circular correlation equals the linear one on
    the ``size`` outputs: what wraps around lands on the zero padding."""
    return size + max(padding, kernel - 1 - padding)


def _matrices(h: int, w: int, k: int, p: int, device: torch.device) -> tuple[Tensor, ...]:
    """E1 (S2, W), E2 (S, H), I1 (H, S), I2 (W, S2), Eb (F, k*k), Ew (F, k*k), then the
    complex conjugates of E1, E2, I1, I2 (for the backward); S2 = S//2+1."""
    s = spectrum_side(max(h, w), k, p)
    key = (h, w, s, k, p, device.type, device.index or 0)
    if key not in _MATS:
        s2 = s // 2 + 1
        step = 2 * math.pi / s

        def cis(angle: Tensor) -> Tensor:
            return torch.polar(torch.ones_like(angle), angle)

        f1 = torch.arange(s, dtype=torch.float64)
        f2 = torch.arange(s2, dtype=torch.float64)
        hh = torch.arange(h, dtype=torch.float64)
        ww = torch.arange(w, dtype=torch.float64)
        # Weights of the half spectrum: columns 1..S/2-1 stand for their mirror images too.
        c = torch.full((s2,), 2.0, dtype=torch.float64)
        c[0] = 1.0
        if s % 2 == 0:
            c[-1] = 1.0
        e1 = cis(-step * f2.view(-1, 1) * ww.view(1, -1))
        e2 = cis(-step * f1.view(-1, 1) * hh.view(1, -1))
        i1 = cis(step * hh.view(-1, 1) * f1.view(1, -1))
        i2 = cis(step * ww.view(-1, 1) * f2.view(1, -1)) * c.view(1, -1) / (s * s)
        t = torch.arange(k, dtype=torch.float64) - p
        phase = f1.view(s, 1, 1, 1) * t.view(1, 1, k, 1) + f2.view(1, s2, 1, 1) * t.view(1, 1, 1, k)
        eb = cis(step * phase).reshape(s * s2, k * k)
        ew = (eb.view(s, s2, k * k) * c.view(1, s2, 1) / (s * s)).reshape(s * s2, k * k)
        mats = (e1, e2, i1, i2, eb, ew, e1.conj(), e2.conj(), i1.conj(), i2.conj())
        _MATS[key] = tuple(m.resolve_conj().to(torch.complex64).to(device) for m in mats)
    return _MATS[key]


# Transforms cost more per multiply-add than their GEMM count suggests (complex data,
# layout copies, small inner dimensions); 3.6 is fitted to per-layer timings on the AVX2
# CPU of benchmarks/README.md. The model still predicts 1.1-1.3x more speedup than
# `alexnet benchmark conv` measures, hence the margin in the threshold.
_TRANSFORM_COST = 3.6
AUTO_MIN_SPEEDUP = 1.4


def estimated_speedup(cin: int, cout: int, k: int, h: int, w: int, groups: int = 1) -> float:
    """Predicted direct / Fourier time of one layer (the cost model behind ``auto``).

    direct:  H W k^2 ci co multiply-adds per image and group
    Fourier: 4 S (S/2+1) ci co for the per-frequency products, plus transforms in and
             out that grow with ci + co, each weighted by _TRANSFORM_COST
    """
    ci, co = cin // groups, cout // groups
    s = spectrum_side(max(h, w), k, (k - 1) // 2)
    s2 = s // 2 + 1
    direct = h * w * k * k * ci * co
    products = 4 * s * s2 * ci * co
    transforms = 4 * (ci + co) * s2 * h * (w + s)
    return direct / (products + _TRANSFORM_COST * transforms)


def _to_spectrum(t: Tensor, e1: Tensor, e2: Tensor) -> Tensor:
    """(H, W, *B) complex -> (S, S2, *B) half spectrum: along W, then along H."""
    h, w, *rest = t.shape
    along_w = torch.matmul(e1, t.view(h, w, -1))  # (H, S2, B)
    return (e2 @ along_w.view(h, -1)).view(e2.shape[0], e1.shape[0], *rest)


def _from_spectrum(z: Tensor, i1: Tensor, i2: Tensor) -> Tensor:
    """(S, S2, *B) -> (H, W, *B) complex whose real part is the spatial result."""
    s, s2, *rest = z.shape
    along_h = (i1 @ z.view(s, -1)).view(i1.shape[0], s2, -1)  # (H, S2, B)
    return torch.matmul(i2, along_h).view(i1.shape[0], i2.shape[0], *rest)


def _spatial_in(t: Tensor, g: int) -> Tensor:
    """(N, C, H, W), any layout -> complex (H, W, g, N, C/g): one copy."""
    n, c, h, w = t.shape
    out = torch.empty((h, w, g, n, c // g), dtype=torch.complex64, device=t.device)
    out.copy_(t.view(n, g, c // g, h, w).permute(3, 4, 1, 0, 2))
    return out


def _channels_last_view(out: Tensor, g: int) -> Tensor:
    """(N, C, H, W) channels_last tensor viewed as (H, W, g, N, C/g)."""
    n, c, h, w = out.shape
    return out.view(n, g, c // g, h, w).permute(3, 4, 1, 0, 2)


def _empty_channels_last(n: int, c: int, h: int, w: int, like: Tensor) -> Tensor:
    return torch.empty((n, c, h, w), dtype=like.dtype, device=like.device).contiguous(
        memory_format=torch.channels_last
    )


class _FourierConv2d(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, w: Tensor, b: Tensor | None, padding: int, groups: int) -> Tensor:  # type: ignore[override]
        n, _, h, wd = x.shape
        o, cg, k, _ = w.shape
        g, og = groups, o // groups
        e1, e2, i1, i2, eb, *_ = _matrices(h, wd, k, padding, x.device)
        f = eb.shape[0]
        wa = w.reshape(g, og, cg, k * k).permute(3, 0, 2, 1).reshape(k * k, g * cg * og)
        kf = (eb @ wa.to(eb.dtype)).view(f, g, cg, og)
        xf = _to_spectrum(_spatial_in(x, g), e1, e2).view(f, g, n, cg)
        yf = torch.matmul(xf, kf)  # (F, g, N, O/g)
        y = _from_spectrum(yf.view(e2.shape[0], e1.shape[0], g, n, og), i1, i2)
        out = _empty_channels_last(n, o, h, wd, x)
        if b is not None:
            torch.add(y.real, b.view(g, 1, og), out=_channels_last_view(out, g))
        else:
            _channels_last_view(out, g).copy_(y.real)
        ctx.save_for_backward(xf, kf)
        ctx.shape = (n, h, wd, k, g, padding, b is not None)
        return out

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        xf, kf = ctx.saved_tensors
        n, h, wd, k, g, padding, has_bias = ctx.shape
        f, _, cg, og = kf.shape
        _, _, _, _, _, ew, e1c, e2c, i1c, i2c = _matrices(h, wd, k, padding, grad.device)
        # Work with conj(G), the gradient's conjugated spectrum: every product below is
        # then a plain (transposed) GEMM, with no conjugated operand to materialise.
        gfc = _to_spectrum(_spatial_in(grad, g), e1c, e2c).view(f, g, n, og)
        gx = gw = gb = None
        if ctx.needs_input_grad[0]:
            # The adjoint of correlating with w is convolving with it: G K^H, and
            # conj(G K^H) = conj(G) K^T, turned back with the conjugated inverse.
            gxfc = torch.matmul(gfc, kf.mT)  # (F, g, N, C/g)
            full = _from_spectrum(gxfc.view(e2c.shape[0], e1c.shape[0], g, n, cg), i1c, i2c)
            gx = _empty_channels_last(n, g * cg, h, wd, grad)
            _channels_last_view(gx, g).copy_(full.real)
        if ctx.needs_input_grad[1]:
            # The weight gradient's spectrum is conj(X^H G) = X^T conj(G); Eb's adjoint
            # then takes the real part of its product with Ew.
            gws = torch.matmul(xf.mT, gfc)  # (F, g, C/g, O/g)
            gwa = (gws.view(f, g * cg * og).transpose(0, 1) @ ew).real
            gw = gwa.reshape(g, cg, og, k, k).permute(0, 2, 1, 3, 4).reshape(g * og, cg, k, k)
        if has_bias and ctx.needs_input_grad[2]:
            gb = grad.sum((0, 2, 3))
        return gx, gw, gb, None, None


def fourier_conv2d(
    x: Tensor, weight: Tensor, bias: Tensor | None, padding: int, groups: int = 1
) -> Tensor:
    """``conv2d(x, weight, bias, stride=1, padding=padding, groups=groups)`` in the Fourier
    domain. Odd square kernels with ``padding = (k - 1) // 2`` ("same" output size),
    float32. Returns a channels_last tensor."""
    k = weight.shape[-1]
    if weight.shape[-2] != k or padding != (k - 1) // 2 or k % 2 == 0:
        raise ValueError(
            f"fourier_conv2d needs an odd square kernel with 'same' padding, got kernel "
            f"{tuple(weight.shape[-2:])} and padding {padding}"
        )
    if x.dtype != torch.float32 or weight.dtype != torch.float32:
        raise ValueError(f"fourier_conv2d computes in float32, got {x.dtype} and {weight.dtype}")
    return _FourierConv2d.apply(x, weight, bias, padding, groups)


@torch.compiler.disable  # torch.compile runs the layer eagerly (its own GEMMs), between graphs
def _fourier(x: Tensor, w: Tensor, b: Tensor | None, padding: int, groups: int) -> Tensor:
    return _FourierConv2d.apply(x, w, b, padding, groups)


class Conv2d(torch.nn.Conv2d):
    """``nn.Conv2d`` (same parameters and state_dict) that can run in the Fourier domain.

    ``impl``: "direct" is PyTorch's kernel; "fourier" uses :func:`fourier_conv2d` whenever
    the call qualifies (CPU, float32 without autocast, stride 1, odd square kernel of 3 or
    more, "same" padding); "auto" only where :func:`estimated_speedup` also predicts at
    least 1.4x (AlexNet's conv2-conv5 at 224 px; some of the small network's layers; none
    of the demo's narrow ones). Anything else (GPUs, where cuDNN picks its own
    algorithms; bf16; the paper's strided conv1) runs the direct kernel.
    """

    def __init__(self, *args, impl: str = "auto", **kwargs) -> None:  # type: ignore[no-untyped-def]
        super().__init__(*args, **kwargs)
        if impl not in ("auto", "direct", "fourier"):
            raise ValueError(f"conv impl must be 'auto', 'direct' or 'fourier', got {impl!r}")
        self.impl = impl

    def uses_fourier(self, x: Tensor) -> bool:
        k = self.kernel_size[0]
        return (
            self.impl != "direct"
            and k >= 3
            and k % 2 == 1
            and self.kernel_size == (k, k)
            and self.stride == (1, 1)
            and self.dilation == (1, 1)
            and self.padding == ((k - 1) // 2,) * 2
            and self.padding_mode == "zeros"
            and x.device.type == "cpu"
            and x.dtype == torch.float32
            and self.weight.dtype == torch.float32
            and not torch.is_autocast_enabled("cpu")
            and (
                self.impl == "fourier"
                or estimated_speedup(
                    self.in_channels, self.out_channels, k, x.shape[-2], x.shape[-1], self.groups
                )
                >= AUTO_MIN_SPEEDUP
            )
        )

    def forward(self, x: Tensor) -> Tensor:
        if self.uses_fourier(x):
            return _fourier(x, self.weight, self.bias, self.padding[0], self.groups)
        return super().forward(x)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, impl={self.impl!r}"
