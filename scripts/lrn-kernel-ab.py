"""Time the native LRN kernel of a git revision against the working tree's, side by side.

    .venv/bin/python scripts/lrn-kernel-ab.py [--base HEAD] [--rounds 5]

Both versions of ``src/alexnet/network/native/lrn.c`` are built with the flags the package
uses, then run forward and backward on conv1's and conv2's outputs at batch 128 (bf16 and
fp32, channels_last), alternating versions every round. Prints the median times, the
speedup and whether the two versions' outputs and gradients have the same bits.
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
SHAPES = ((128, 96, 55, 55), (128, 256, 27, 27))
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
    for dtype, suffix in ((torch.bfloat16, "_bf16"), (torch.float32, "")):
        for shape in SHAPES:
            n, c, h, w = shape
            x = torch.randn(shape).to(dtype).contiguous(memory_format=torch.channels_last)
            g = torch.randn(shape).to(dtype).contiguous(memory_format=torch.channels_last)
            rows, row_bytes = n * h * w, c * x.element_size()
            # The last argument turns the folded-in ReLU off (the plain LRN); kernels older
            # than that flag ignore one extra argument under the usual C calling conventions.
            args = (ctypes.c_int(c), *ARGS, ctypes.c_float(2.0), ctypes.c_int(0))
            times: dict[str, list[tuple[float, float]]] = {t: [] for t in libs}
            outs = {}
            for _ in range(a.rounds + 1):  # the first round warms up
                for tag, lib in libs.items():
                    y, gx = torch.empty_like(x), torch.empty_like(x)
                    fwd = getattr(lib, "alexnet_lrn_forward" + suffix)
                    bwd = getattr(lib, "alexnet_lrn_backward" + suffix)
                    t0 = time.perf_counter()
                    native.run_rows(fwd, rows, row_bytes, [x, y], *args)
                    t1 = time.perf_counter()
                    native.run_rows(bwd, rows, row_bytes, [x, g, gx], *args)
                    times[tag].append((t1 - t0, time.perf_counter() - t1))
                    outs[tag] = (y, gx)
            med = {
                t: [sorted(r[i] for r in v[1:])[len(v[1:]) // 2] * 1000 for i in (0, 1)]
                for t, v in times.items()
            }
            ints = torch.int16 if dtype == torch.bfloat16 else torch.int32
            same = all(
                torch.equal(p.view(ints), q.view(ints)) for p, q in zip(*outs.values(), strict=True)
            )
            (fb, bb), (ft, bt) = med.values()
            print(
                f"{str(dtype).removeprefix('torch.'):8s} {shape}: {a.base} fwd {fb:.1f} bwd "
                f"{bb:.1f} ms, tree fwd {ft:.1f} bwd {bt:.1f} ms, "
                f"{(fb + bb) / (ft + bt):.2f}x; same bits: {same}",
                flush=True,
            )


if __name__ == "__main__":
    sys.exit(main())
