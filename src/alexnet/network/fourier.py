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

Which path is faster depends on the CPU (its vector units, oneDNN's kernels for it), so
``Conv2d(impl="auto")`` measures: at the first forward for an input size it times forward
+ backward (forward only when gradients are off, as in evaluation) of both paths on random data of the layer's shape (batch min(N, 32), a warm-up
then interleaved rounds, medians) and takes the Fourier path only if that is at least
``MEASURED_MIN_SPEEDUP`` faster. Results are cached on disk per machine (CPU model and
flags, torch version, thread count, this file's code, layer shape) in ``$ALEXNET_CACHE``
(default ``~/.cache/alexnet``), ``fourier-probe-*.json``, so a machine probes a shape
once; delete the files to re-measure. The cost model :func:`estimated_speedup` remains a
pre-filter: layers it predicts below ``PROBE_MIN_PREDICTED`` stay direct untimed.
``ALEXNET_FOURIER_PROBE=0`` skips probing and the cache: the cost model alone decides
(Fourier from a predicted ``AUTO_MIN_SPEEDUP``), as before probing existed.
``Conv2d.decision`` and :func:`conv_decisions` report what was chosen and why.

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

import contextlib
import hashlib
import json
import math
import os
import statistics
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from ..atomic import write_json
from ..hardware import cpu_flags, cpu_model, onednn_isa_cap
from .native import _cache_dir

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
# `alexnet benchmark conv` measures there, and on other CPUs it can be far off (the
# AVX-512 Xeon of benchmarks/README.md: conv5 predicted 1.56x, measured 0.84x), so "auto" measures instead.
_TRANSFORM_COST = 3.6
# With ALEXNET_FOURIER_PROBE=0 the cost model alone decides, with this margin.
AUTO_MIN_SPEEDUP = 1.4
# The probe's pre-filter: below this prediction the layer is not timed at all. The model
# has overestimated the Fourier path on every CPU measured so far, never underestimated.
PROBE_MIN_PREDICTED = 1.0
# A probe is a few rounds on one small batch, on a machine that may be busy: differences
# of a few per cent are noise there. Ties go to PyTorch's kernel, which needs no
# transform matrices and rounds like everyone else's, so Fourier has to win clearly.
MEASURED_MIN_SPEEDUP = 1.1
_PROBE_BATCH = 32  # enough to fill the GEMMs of both paths; the ratio barely moves above
_PROBE_ROUNDS = 5


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


_NO_PROBE = 0  # > 0 inside no_probe()


def _probe_enabled() -> bool:
    return not _NO_PROBE and os.environ.get("ALEXNET_FOURIER_PROBE", "1").strip().lower() not in (
        "0", "false", "no", "off"
    )  # fmt: skip


@contextlib.contextmanager
def no_probe() -> Iterator[None]:
    """Decide by the cost model alone inside this block (``alexnet info``'s one-image pass
    would otherwise time every layer at batch 1)."""
    global _NO_PROBE
    _NO_PROBE += 1
    try:
        yield
    finally:
        _NO_PROBE -= 1


_MACHINE: dict[str, Any] = {}


def _machine() -> dict[str, Any]:
    """What makes a probe's answer specific to this machine and software."""
    if not _MACHINE:
        _MACHINE.update(
            cpu=cpu_model(),
            cpu_flags=hashlib.sha256(cpu_flags().encode()).hexdigest()[:16],
            cpu_capability=torch.backends.cpu.get_cpu_capability(),
            onednn_isa_cap=onednn_isa_cap() or "",
            torch=str(torch.__version__),
            # This file's code: a change to either path's speed invalidates old probes.
            code=hashlib.sha256(Path(__file__).read_bytes()).hexdigest()[:16],
        )
    return {**_MACHINE, "threads": torch.get_num_threads()}


def _time_probe(
    cin: int,
    cout: int,
    k: int,
    groups: int,
    h: int,
    w: int,
    batch: int,
    *,
    channels_last: bool,
    input_grad: bool,
    bias: bool,
    train: bool = True,
) -> tuple[float, float]:
    """Median seconds of one forward + backward (``train``) or one forward, (direct,
    Fourier), on random data of this
    shape: interleaved rounds after one warm-up each, so that load from other processes
    affects both alike. Private data and generator: the caller's tensors, parameters,
    autograd graph and global RNG state are untouched."""
    # The caller may be under no_grad or inference_mode (evaluation); the probe needs grad
    # and tensors made outside inference mode.
    with torch.inference_mode(False), torch.enable_grad():
        gen = torch.Generator().manual_seed(0)
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        p = (k - 1) // 2
        x = torch.randn(batch, cin, h, w, generator=gen).contiguous(memory_format=fmt)
        wt = torch.randn(cout, cin // groups, k, k, generator=gen).contiguous(memory_format=fmt)
        wt.mul_((cin // groups * k * k) ** -0.5)
        b = torch.randn(cout, generator=gen) if bias else None
        g = torch.randn(batch, cout, h, w, generator=gen).contiguous(memory_format=fmt)
        leaves = [t.requires_grad_() for t in (x if input_grad else None, wt, b) if t is not None]

        def direct() -> None:
            if not train:
                with torch.no_grad():
                    F.conv2d(x, wt, b, padding=p, groups=groups)
                return
            torch.autograd.grad(F.conv2d(x, wt, b, padding=p, groups=groups), leaves, g)

        def fourier() -> None:
            if not train:
                with torch.no_grad():
                    _FourierConv2d.apply(x, wt, b, p, groups)
                return
            torch.autograd.grad(_FourierConv2d.apply(x, wt, b, p, groups), leaves, g)

        fns = (direct, fourier)
        times: tuple[list[float], list[float]] = ([], [])
        for fn in fns:
            fn()
        for _ in range(_PROBE_ROUNDS):
            for fn, t in zip(fns, times, strict=True):
                t0 = time.perf_counter()
                fn()
                t.append(time.perf_counter() - t0)
    return statistics.median(times[0]), statistics.median(times[1])


def _read_probe(path: Path, key: dict[str, Any]) -> tuple[float, float] | None:
    """(direct, Fourier) ms from a cache file written for ``key``; None when it is missing,
    unreadable, corrupt or for something else (then the caller probes and overwrites)."""
    try:
        data = json.loads(path.read_text())
        times = float(data["direct_ms"]), float(data["fourier_ms"])
        if data["key"] == key and all(math.isfinite(t) and t > 0 for t in times):
            return times
    except (OSError, ValueError, TypeError, KeyError, AttributeError):
        pass
    return None


def _probe(shape: tuple[int, ...], predicted: float, **settings: bool) -> dict[str, Any]:
    """Measured direct vs Fourier time of one layer on this machine, from the cache in
    ``$ALEXNET_CACHE`` where an earlier probe wrote it, else timed now and written.
    ``shape`` is (cin, cout, k, groups, h, w, batch); ``settings`` are
    :func:`_time_probe`'s keywords (channels_last, input_grad, bias, train)."""
    cin, cout, k, groups, h, w, batch = shape
    key = {
        **_machine(),
        "layer": {"cin": cin, "cout": cout, "k": k, "groups": groups, "h": h, "w": w},
        "batch": batch,
        **settings,
    }
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]
    path = _cache_dir() / f"fourier-probe-{digest}.json"
    times = _read_probe(path, key)
    cached = times is not None
    if times is None:
        d, f = _time_probe(*shape, **settings)
        times = d * 1e3, f * 1e3
    speedup = times[0] / times[1]
    # The choice is made from the times, so a changed threshold applies to cached probes.
    choice = "fourier" if speedup >= MEASURED_MIN_SPEEDUP else "direct"
    if not cached:
        record = {
            "key": key,
            "direct_ms": times[0],
            "fourier_ms": times[1],
            "speedup": speedup,
            "choice": choice,
            "predicted": predicted,
            "min_speedup": MEASURED_MIN_SPEEDUP,
        }
        try:
            write_json(path, record)
        except OSError as e:  # a read-only cache costs a probe per process, nothing else
            warnings.warn(f"could not write the Fourier probe cache {path}: {e}", stacklevel=2)
    return {
        "impl": choice,
        "direct_ms": round(times[0], 3),
        "fourier_ms": round(times[1], 3),
        "measured": round(speedup, 3),
        "cached": cached,
        "cache_file": str(path),
    }


class Conv2d(torch.nn.Conv2d):
    """``nn.Conv2d`` (same parameters and state_dict) that can run in the Fourier domain.

    ``impl``: "direct" is PyTorch's kernel; "fourier" uses :func:`fourier_conv2d` whenever
    the call qualifies (CPU, float32 without autocast, stride 1, odd square kernel of 3 or
    more, "same" padding); "auto" where it qualifies and is measured faster on this
    machine (see the module docstring). Anything else (GPUs, where cuDNN picks its own
    algorithms; bf16; the paper's strided conv1) runs the direct kernel.

    :attr:`decision` says what the last new kind of input (size, dtype, device) got and
    why: None until the first forward, then a JSON-serialisable dict with at least
    ``impl`` ("fourier" | "direct") and ``reason``. Decisions are kept per input size
    and settings, so later forwards only look them up.
    """

    def __init__(self, *args, impl: str = "auto", **kwargs) -> None:  # type: ignore[no-untyped-def]
        super().__init__(*args, **kwargs)
        if impl not in ("auto", "direct", "fourier"):
            raise ValueError(f"conv impl must be 'auto', 'direct' or 'fourier', got {impl!r}")
        self.impl = impl
        self.decision: dict[str, Any] | None = None
        self._decided: dict[tuple[Any, ...], dict[str, Any]] = {}

    def _not_eligible(self, x: Tensor) -> str | None:
        """Why :func:`fourier_conv2d` cannot compute this call, or None."""
        k, (kh, kw) = self.kernel_size[0], self.kernel_size
        if x.device.type != "cpu":
            return f"{x.device.type} input"
        if x.dim() != 4:
            return f"{x.dim()}-d input"
        if torch.is_autocast_enabled("cpu"):
            return "autocast"
        if x.dtype != torch.float32 or self.weight.dtype != torch.float32:
            return f"{x.dtype} input, {self.weight.dtype} weight"
        if self.stride != (1, 1):
            return f"stride {self.stride}"
        if kh != kw or k < 3 or k % 2 == 0:
            return f"{kh}x{kw} kernel"
        if self.dilation != (1, 1):
            return f"dilation {self.dilation}"
        if self.padding != ((k - 1) // 2,) * 2 or self.padding_mode != "zeros":
            return f"padding {self.padding} {self.padding_mode}, not 'same' zeros"
        return None

    def _make_decision(self, x: Tensor) -> dict[str, Any]:
        if self.impl == "direct":
            return {"impl": "direct", "reason": "forced by impl='direct'"}
        why_not = self._not_eligible(x)
        if why_not is not None:
            return {"impl": "direct", "reason": f"not eligible: {why_not}"}
        if self.impl == "fourier":
            return {"impl": "fourier", "reason": "forced by impl='fourier'"}
        cin, cout, k, g = self.in_channels, self.out_channels, self.kernel_size[0], self.groups
        h, w = x.shape[-2], x.shape[-1]
        predicted = estimated_speedup(cin, cout, k, h, w, g)
        info = {"predicted": round(predicted, 3), "input_hw": [h, w]}
        if not _probe_enabled():
            impl = "fourier" if predicted >= AUTO_MIN_SPEEDUP else "direct"
            reason = f"predicted {predicted:.2f}x by the cost model, not measured"
            return {"impl": impl, "reason": reason, **info}
        if predicted < PROBE_MIN_PREDICTED:
            return {"impl": "direct", "reason": f"predicted {predicted:.2f}x, not probed", **info}
        batch = max(1, min(x.shape[0], _PROBE_BATCH))
        m = _probe(
            (cin, cout, k, g, h, w, batch), predicted,
            channels_last=x.is_contiguous(memory_format=torch.channels_last),
            input_grad=x.requires_grad,
            train=torch.is_grad_enabled(),  # evaluation: forward time only
            bias=self.bias is not None,
        )  # fmt: skip
        reason = f"measured {m['measured']:.2f}x at batch {batch}" + (
            " (cached)" if m["cached"] else ""
        )
        return {**m, "reason": reason, "probe_batch": batch, **info}

    @torch.compiler.disable  # file I/O and timing: eager, see forward
    def _decide(self, x: Tensor) -> bool:
        key = (
            self.impl,
            x.device.type,
            x.dtype,
            self.weight.dtype,
            torch.is_autocast_enabled("cpu"),
            x.dim(),
            x.shape[-2],
            x.shape[-1],
            torch.is_grad_enabled(),  # training and evaluation are timed apart
            _NO_PROBE > 0,  # a cost-model guess under no_probe() must not outlive it
        )
        decision = self._decided.get(key)
        if decision is None:
            decision = self._decided[key] = self._make_decision(x)
            self.decision = decision
        return decision["impl"] == "fourier"

    def uses_fourier(self, x: Tensor) -> bool:
        """Whether a forward with ``x`` runs in the Fourier domain. Under "auto" the first
        call for an input size decides, probing if needed (see the module docstring); the
        batch size of that call sets the probe's (at most 32)."""
        if self._plainly_direct(x):
            self._decide(x)  # records why
            return False
        return self._decide(x)

    def _plainly_direct(self, x: Tensor) -> bool:
        """Direct whatever is measured: known from the module and device alone."""
        k = self.kernel_size[0]
        return (
            self.impl == "direct"
            or x.device.type != "cpu"
            or x.dtype != torch.float32
            or torch.is_autocast_enabled("cpu")
            or self.kernel_size != (k, k)
            or k < 3
            or k % 2 == 0
            or self.stride != (1, 1)
            or self.dilation != (1, 1)
            or self.padding != ((k - 1) // 2,) * 2
            or self.padding_mode != "zeros"
        )

    def forward(self, x: Tensor) -> Tensor:
        if self._plainly_direct(x):
            # Known without a lookup: torch.compile keeps these layers in its graphs (GPUs,
            # strided layers) after one graph break that records the decision.
            if self.decision is None:
                self._decide(x)
            return super().forward(x)
        return self._cpu_forward(x)

    # torch.compile runs the layer eagerly, between graphs, whichever path it takes: the
    # decision needs file I/O and timing, and a lookup of it traced into a graph would
    # rest on dynamo's guards on a changing dict. On CPU, inductor calls oneDNN for the
    # direct path anyway; the Fourier path is its own GEMMs.
    @torch.compiler.disable
    def _cpu_forward(self, x: Tensor) -> Tensor:
        if self._decide(x):
            return _FourierConv2d.apply(x, self.weight, self.bias, self.padding[0], self.groups)
        return super().forward(x)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, impl={self.impl!r}"


def conv_decisions(model: torch.nn.Module) -> dict[str, dict[str, Any]]:
    """Each :class:`Conv2d` of ``model`` by qualified name -> its :attr:`Conv2d.decision`
    (a copy; ``{"impl": None, "reason": "not run yet"}`` before its first forward).
    JSON-serialisable, for run records. Wrappers' prefixes (``torch.compile``'s
    ``_orig_mod.``, DDP's ``module.``) are dropped."""
    out = {}
    for name, m in model.named_modules():
        if isinstance(m, Conv2d):
            for prefix in ("_orig_mod.", "module."):
                name = name.removeprefix(prefix)
            out[name] = dict(m.decision) if m.decision else {"impl": None, "reason": "not run yet"}
    return out
