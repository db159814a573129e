import os
import subprocess
import sys

import pytest
import torch

from alexnet import native
from alexnet.lrn import local_response_norm

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
def test_native_lrn_same_bits_for_any_thread_count():
    torch.manual_seed(0)
    x = _cl(torch.randn(8, 96, 13, 13).relu()).requires_grad_()
    g = _cl(torch.randn(8, 96, 13, 13))
    threads = torch.get_num_threads()
    out = []
    try:
        for n in (1, 3):
            torch.set_num_threads(n)
            y = local_response_norm(x, groups=2)
            out.append((y, *torch.autograd.grad(y, x, g)))
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(out[0][0], out[1][0]) and torch.equal(out[0][1], out[1][1])


def test_pytorch_path_for_other_layouts_and_dtypes():
    x = torch.randn(2, 8, 4, 4, requires_grad=True)
    assert "Native" not in type(local_response_norm(x).grad_fn).__name__  # NCHW
    xd = _cl(torch.randn(2, 8, 4, 4, dtype=torch.float64)).requires_grad_()
    assert "Native" not in type(local_response_norm(xd).grad_fn).__name__
    xm = _cl(torch.randn(2, 8, 4, 4)).requires_grad_()
    assert "Native" not in type(local_response_norm(xm, impl="matmul").grad_fn).__name__


_PROBE = """
import torch
from alexnet import native
from alexnet.lrn import local_response_norm
print(native.status())
x = torch.randn(2, 8, 5, 5).contiguous(memory_format=torch.channels_last).requires_grad_()
y = local_response_norm(x)
y.sum().backward()
print(type(y.grad_fn).__name__, bool(torch.isfinite(x.grad).all()))
"""


def _probe(tmp_path, **env: str) -> list[str]:
    full = {k: v for k, v in os.environ.items() if k not in ("ALEXNET_NATIVE", "CC")}
    full.update(ALEXNET_CACHE=str(tmp_path / "cache"), **env)
    out = subprocess.run(
        [sys.executable, "-c", _PROBE], env=full, capture_output=True, text=True, check=True
    )
    return out.stdout.strip().splitlines()


def test_falls_back_when_the_compiler_fails(tmp_path):
    status, result = _probe(tmp_path, CC=str(tmp_path / "no-such-cc"))
    assert status.startswith("native kernels off: compiling lrn.c failed")
    assert result == "_LRNFunctionBackward True"


def test_can_be_switched_off(tmp_path):
    status, result = _probe(tmp_path, ALEXNET_NATIVE="0")
    assert status == "native kernels off: disabled by ALEXNET_NATIVE=0"
    assert result == "_LRNFunctionBackward True"


@needs_native
def test_build_is_cached_per_machine(tmp_path):
    status, result = _probe(tmp_path)
    assert result == "_NativeLRNFunctionBackward True"
    (lib,) = (tmp_path / "cache").glob("alexnet-native-*.so")
    stamp = lib.stat().st_mtime_ns
    assert _probe(tmp_path)[0] == status  # second process: loads, does not rebuild
    assert lib.stat().st_mtime_ns == stamp
    assert not [p for p in (tmp_path / "cache").iterdir() if p != lib]  # no temp files left
