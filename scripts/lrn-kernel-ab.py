"""Time the native LRN kernels of a git revision against the working tree's, side by side.

    .venv/bin/python scripts/lrn-kernel-ab.py [--base HEAD] [--rounds 5]

Both versions of ``src/alexnet/network/native/lrn.c`` are built with the flags the package
uses, then run forward and backward on conv1's and conv2's outputs at batch 128 (bf16 and
fp32, channels_last), alternating versions every round (which one runs first swaps each
round): the plain LRN, and the fused ReLU + LRN + 3/2 max pool of the paper's network and
of the small one (where the base has it). Prints the median times, the speedup, and
whether the two versions' outputs and gradients have the same bits (else how far apart).
"""

from __future__ import annotations

import argparse
import ctypes
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from alexnet import allocator
from alexnet.network import native

ROOT = Path(__file__).resolve().parents[1]
SOURCE = "src/alexnet/network/native/lrn.c"
# (kernel, input shape, ceil-mode pooling): conv1's and conv2's outputs at batch 128 in the
# paper's network (plain LRN and fused), and in the small one (fused, ceil mode).
CASES = (
    ("lrn", (128, 96, 55, 55), False),
    ("lrn", (128, 256, 27, 27), False),
    ("lrn+pool", (128, 96, 55, 55), False),
    ("lrn+pool", (128, 256, 27, 27), False),
    ("lrn+pool", (128, 48, 32, 32), True),
    ("lrn+pool", (128, 128, 16, 16), True),
)
POOL = native.POOL_KERNELS
# The paper's LRN in the "mean" convention: n = 5, alpha / n, beta 0.75, k 2; two towers.
ARGS = (ctypes.c_int(2), ctypes.c_int(5), ctypes.c_float(1e-4 / 5), ctypes.c_float(0.75))


def build(source: Path, out: Path) -> ctypes.CDLL:
    cmd = [
        native._compiler() or "cc",
        *native._FLAGS,
        "-march=native",
        "-o",
        str(out),
        str(source),
        "-lm",
    ]
    subprocess.run(cmd, check=True)
    return ctypes.CDLL(str(out))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--base", default="HEAD", help="git revision to compare against")
    ap.add_argument("--rounds", type=int, default=5)
    a = ap.parse_args()
    if a.rounds < 1:
        ap.error("--rounds must be >= 1")
    allocator.configure()
    with tempfile.TemporaryDirectory() as tmp:
        base_src = Path(tmp) / "base.c"
        try:
            base_src.write_bytes(
                subprocess.check_output(["git", "show", f"{a.base}:{SOURCE}"], cwd=ROOT)
            )
        except subprocess.CalledProcessError:
            sys.exit(f"{a.base} has no {SOURCE} (or is not a revision): pick another --base")
        libs = {
            a.base: build(base_src, Path(tmp) / "base.so"),
            "tree": build(ROOT / SOURCE, Path(tmp) / "tree.so"),
        }  # loaded: the files may go
    for tag, lib in libs.items():
        missing = [f for pair in native.KERNELS.values() for f in pair if not hasattr(lib, f)]
        if missing:
            sys.exit(f"{tag}'s {SOURCE} lacks {', '.join(missing)}: pick a later --base")
    print(f"{torch.get_num_threads()} threads; {a.rounds} rounds; base {a.base} vs working tree")
    for dtype in (torch.bfloat16, torch.float32):
        for kind, shape, ceil in CASES:
            if kind == "lrn+pool" and not all(
                hasattr(lib, POOL[dtype][0]) for lib in libs.values()
            ):
                print(f"{kind} {shape}: {a.base} has no fused LRN + pool kernel; skipped")
                continue
            x = torch.randn(shape).to(dtype).contiguous(memory_format=torch.channels_last)
            times: dict[str, list[tuple[float, float]]] = {t: [] for t in libs}
            outs = {}
            order = list(libs.items())
            for _ in range(a.rounds + 1):  # the first round warms up
                for tag, lib in order:
                    fwd, bwd, outs[tag] = run(lib, kind, x, ceil)
                    times[tag].append((fwd, bwd))
                order.reverse()  # neither version always runs first
            med = {
                t: [sorted(r[i] for r in v[1:])[len(v[1:]) // 2] * 1000 for i in (0, 1)]
                for t, v in times.items()
            }
            (fb, bb), (ft, bt) = med.values()
            print(
                f"{str(dtype).removeprefix('torch.'):8s} {kind:8s} {shape}: {a.base} fwd {fb:.1f} "
                f"bwd {bb:.1f} ms, tree fwd {ft:.1f} bwd {bt:.1f} ms, "
                f"{(fb + bb) / (ft + bt):.2f}x; {agreement(*outs.values())}",
                flush=True,
            )


def run(
    lib: ctypes.CDLL, kind: str, x: torch.Tensor, ceil: bool
) -> tuple[float, float, dict[str, torch.Tensor]]:
    """One forward and one backward of ``kind`` with ``lib``'s kernels: seconds each, and
    the outputs (the pooled kernels' argmax bytes included)."""
    n, c, h, w = x.shape
    if kind == "lrn":
        g = noise(x.shape, x.dtype)
        rows, row_bytes = n * h * w, c * x.element_size()
        # The last argument turns the folded-in ReLU off (the plain LRN); kernels older than
        # that flag ignore one extra argument under the usual C calling conventions.
        args = (ctypes.c_int(c), *ARGS, ctypes.c_float(2.0), ctypes.c_int(0))
        y, gx = torch.empty_like(x), torch.empty_like(x)
        suffix = "_bf16" if x.dtype == torch.bfloat16 else ""
        t0 = time.perf_counter()
        native.run_rows(
            getattr(lib, "alexnet_lrn_forward" + suffix), rows, row_bytes, [x, y], *args
        )
        t1 = time.perf_counter()
        native.run_rows(
            getattr(lib, "alexnet_lrn_backward" + suffix), rows, row_bytes, [x, g, gx], *args
        )
        return t1 - t0, time.perf_counter() - t1, {"y": y, "gx": gx}
    # The network's use: ReLU, LRN and 3/2 max pooling in one pass each way.
    ho, wo = (-(-(s - 3) // 2) + 1 if ceil else (s - 3) // 2 + 1 for s in (h, w))
    z = torch.empty((n, c, ho, wo), dtype=x.dtype, memory_format=torch.channels_last)
    arg = torch.empty((n, ho, wo, c), dtype=torch.uint8)
    gz, gx = noise(z.shape, x.dtype), torch.empty_like(x)
    args = (
        *(ctypes.c_int(v) for v in (h, w, c)), *ARGS, ctypes.c_float(2.0),
        *(ctypes.c_int(v) for v in (1, 3, 2, ho, wo)),
    )  # fmt: skip
    fwd, bwd = (getattr(lib, f) for f in POOL[x.dtype])
    t0 = time.perf_counter()
    native.run_units(fwd, n * ho, [x, z, arg], *args)
    t1 = time.perf_counter()
    native.run_units(bwd, n * h, [x, gz, arg, gx], *args)
    return t1 - t0, time.perf_counter() - t1, {"z": z, "argmax": arg, "gx": gx}


def noise(shape: torch.Size, dtype: torch.dtype) -> torch.Tensor:
    """The same random gradient for both versions."""
    gen = torch.Generator().manual_seed(0)
    return torch.randn(shape, generator=gen).to(dtype).contiguous(memory_format=torch.channels_last)


def bits(t: torch.Tensor) -> torch.Tensor:
    return t.view({1: torch.uint8, 2: torch.int16, 4: torch.int32}[t.element_size()])


def agreement(base: dict[str, torch.Tensor], tree: dict[str, torch.Tensor]) -> str:
    """ "same bits", or per output that differs: for values the largest difference over the
    largest magnitude (not per element), for the argmax bytes how many differ."""
    differ = []
    for name, p in base.items():
        q = tree[name]
        if torch.equal(bits(p), bits(q)):
            continue
        if p.is_floating_point():
            d = (p.float() - q.float()).abs().max().item() / max(
                q.float().abs().max().item(), 1e-30
            )
            differ.append(f"{name} max |diff| / max |value| {d:.1e}")
        else:
            differ.append(f"{name} {int((p != q).sum())} of {p.numel():,} positions")
    return "same bits" if not differ else "differ: " + "; ".join(differ)


if __name__ == "__main__":
    sys.exit(main())
