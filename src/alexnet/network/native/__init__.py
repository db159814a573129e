"""C kernels for the hot spots PyTorch has no fused op for, compiled on first use.

The system C compiler (``$CC``, else ``cc``/``gcc``/``clang``) builds the sources here once
per machine into ``$ALEXNET_CACHE`` (default ``~/.cache/alexnet``); the shared library is
loaded with ctypes, so there is nothing to build at install time and no Python or torch
headers are involved. When no compiler works, or ``ALEXNET_NATIVE=0``, callers use their
pure-PyTorch path: same results, slower. :func:`status` says which one is active and why.
The kernels take float32 and bfloat16 storage (:data:`KERNELS`); bf16 is computed in float32.

Work is split into row ranges across ``torch.get_num_threads()`` threads; ctypes releases
the GIL for the duration of each call.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch

from ...atomic import atomic_path
from ...hardware import cpu_flags

_SOURCE = Path(__file__).with_name("lrn.c")
_FLAGS = ("-O3", "-fno-math-errno", "-fno-trapping-math", "-fPIC", "-shared", "-std=c99")
_lock = threading.Lock()
_lib: ctypes.CDLL | None = None
_why_not: str | None = None
_tried = False
_pool: ThreadPoolExecutor | None = None

# (forward, backward) C symbols per tensor dtype; every one returns 0 or an error code.
KERNELS: dict[torch.dtype, tuple[str, str]] = {
    torch.float32: ("alexnet_lrn_forward", "alexnet_lrn_backward"),
    torch.bfloat16: ("alexnet_lrn_forward_bf16", "alexnet_lrn_backward_bf16"),
}
# LRN then max pooling in one pass each way (forward, backward), called by output and input
# rows: :func:`run_units`.
POOL_KERNELS: dict[torch.dtype, tuple[str, str]] = {
    torch.float32: ("alexnet_lrn_pool_forward", "alexnet_lrn_pool_backward"),
    torch.bfloat16: ("alexnet_lrn_pool_bf16_forward", "alexnet_lrn_pool_bf16_backward"),
}


def _cache_dir() -> Path:
    if os.environ.get("ALEXNET_CACHE"):
        return Path(os.environ["ALEXNET_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "alexnet"


def _compiler() -> str | None:
    cc = os.environ.get("CC")
    if cc:
        return shutil.which(cc) or cc
    return next((p for p in map(shutil.which, ("cc", "gcc", "clang")) if p), None)


def _build(cc: str) -> Path:
    """Compile (or reuse) the library for this source, compiler and CPU; returns its path."""
    source = _SOURCE.read_bytes()
    key = hashlib.sha256(
        b"\0".join([source, cc.encode(), " ".join(_FLAGS).encode(), cpu_flags().encode()])
    ).hexdigest()[:16]
    out = _cache_dir() / f"alexnet-native-{key}.so"
    if out.exists():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    errors = []
    # -march=native vectorises for this CPU (the cache key includes its flags); retry
    # without it for compilers that do not know the option.
    for arch in (["-march=native"], []):
        try:  # atomic: concurrent processes never load a partial library
            with atomic_path(out) as tmp:
                cmd = [cc, *_FLAGS, *arch, "-o", str(tmp), str(_SOURCE), "-lm"]
                proc = subprocess.run(cmd, capture_output=True, text=True)
                if proc.returncode != 0:
                    raise _CompileError(f"{' '.join(cmd)}: {proc.stderr.strip()[-500:]}")
            return out
        except _CompileError as err:
            errors.append(str(err))
    raise RuntimeError("; ".join(errors))


class _CompileError(Exception):
    pass


def library() -> ctypes.CDLL | None:
    """The compiled kernels, or None (see :func:`status`)."""
    global _lib, _why_not, _tried
    if _tried:
        return _lib
    with _lock:
        if _tried:
            return _lib
        if os.environ.get("ALEXNET_NATIVE", "1").strip().lower() in ("0", "false", "no", "off"):
            _why_not = "disabled by ALEXNET_NATIVE=0"
        elif (cc := _compiler()) is None:
            _why_not = "no C compiler found (set CC, or install gcc)"
        else:
            try:
                lib = ctypes.CDLL(str(_build(cc)))
                names = [*KERNELS.values(), *POOL_KERNELS.values()]
                for name in (n for pair in names for n in pair):
                    getattr(lib, name).restype = ctypes.c_int
                _lib = lib
            except (OSError, RuntimeError) as exc:
                _why_not = f"compiling {_SOURCE.name} failed: {exc}"
        _tried = True
    return _lib


def status() -> str:
    """One line for `alexnet info` and benchmark results."""
    lib = library()
    if lib is None:
        return f"native kernels off: {_why_not}"
    dtypes = ", ".join(str(d).removeprefix("torch.") for d in KERNELS)
    return f"native kernels ({dtypes}): {lib._name}"


def _functions(
    table: dict[torch.dtype, tuple[str, str]], dtype: torch.dtype
) -> tuple[Callable[..., int], Callable[..., int]] | None:
    lib = library()
    if lib is None or dtype not in table:
        return None
    return getattr(lib, table[dtype][0]), getattr(lib, table[dtype][1])


def kernels(dtype: torch.dtype) -> tuple[Callable[..., int], Callable[..., int]] | None:
    """The (forward, backward) C functions for ``dtype``, or None where there are none."""
    return _functions(KERNELS, dtype)


def pool_kernels(dtype: torch.dtype) -> tuple[Callable[..., int], Callable[..., int]] | None:
    """The (forward, backward) LRN + max-pool C functions for ``dtype``, or None."""
    return _functions(POOL_KERNELS, dtype)


def lrn_path(
    device: torch.device | str,
    autocast_dtype: torch.dtype | None = None,
    channels_last: bool = True,
) -> str:
    """Which LRN implementation a model on ``device`` runs with the default ``impl="fast"``:
    the layer sees conv outputs in autocast's dtype, else float32 (mirrors lrn._use_native)."""
    dtype = autocast_dtype if autocast_dtype is not None else torch.float32
    name = str(dtype).removeprefix("torch.")
    dev = torch.device(device).type
    if dev == "cpu" and channels_last and kernels(dtype) is not None:
        math = ", float32 math" if dtype != torch.float32 else ""
        return f"fused C kernel, {name}{math} (with the ReLU before and max-pool after, if any)"
    if dev != "cpu":
        from ..lrn import compiled_lrn_status, triton_available

        opted_in = os.environ.get("ALEXNET_LRN_TRITON", "0") == "1"
        if dev == "cuda" and opted_in and triton_available():
            return f"fused Triton kernels (experimental, ALEXNET_LRN_TRITON=1), {name}"

        off = compiled_lrn_status(device)
        if off is None:
            return (
                f"PyTorch banded matmul in float32 for training; inference: compiled pointwise "
                f"kernel (torch.compile), {name} in and out"
            )
        why = f"{dev} tensors; {off}"
    elif not channels_last:
        why = "NCHW layout"
    elif dtype not in KERNELS:
        why = f"no {name} kernel"
    else:
        why = status()
    return f"PyTorch banded matmul in float32 ({why})"


_pool_key: tuple[int, int] | None = None


def _threads() -> ThreadPoolExecutor:
    """A pool sized to torch's thread count, rebuilt when that changes or after a fork
    (a forked child inherits the pool object but not its threads)."""
    global _pool, _pool_key
    key = (os.getpid(), torch.get_num_threads())
    if _pool is None or _pool_key != key:
        if _pool is not None and _pool_key is not None and _pool_key[0] == key[0]:
            _pool.shutdown(wait=False)
        _pool = ThreadPoolExecutor(max_workers=key[1], thread_name_prefix="alexnet-native")
        _pool_key = key
    return _pool


def _split(total: int, call: Callable[[int, int], int], name: str, least: int) -> None:
    """``call(lo, hi)`` over ``[0, total)`` in chunks, one per torch thread (at least
    ``least`` units each), in parallel; raises on the kernels' error codes."""
    n = max(1, min(torch.get_num_threads(), total // least))
    bounds = [total * i // n for i in range(n + 1)]
    codes = [call(0, total)] if n == 1 else list(_threads().map(call, bounds[:-1], bounds[1:]))
    if 2 in codes:  # the kernels' code for a failed malloc
        raise MemoryError(f"{name}: out of memory for its buffers (window masks, rows)")
    if any(codes):
        raise ValueError(f"{name} rejected its arguments (code {max(codes)})")


def run_rows(
    fn: Callable[..., int], rows: int, row_bytes: int, tensors: list[torch.Tensor], *args: Any
) -> None:
    """Call ``fn(ptr0 + off, ptr1 + off, ..., nrows, *args)`` on row chunks in parallel.

    Every tensor must hold ``rows`` contiguous rows of ``row_bytes`` bytes.
    """
    ptrs = [t.data_ptr() for t in tensors]

    def call(lo: int, hi: int) -> int:
        return fn(
            *(ctypes.c_void_p(p + lo * row_bytes) for p in ptrs), ctypes.c_long(hi - lo), *args
        )

    _split(rows, call, fn.__name__, least=64)


def run_units(fn: Callable[..., int], units: int, tensors: list[torch.Tensor], *args: Any) -> None:
    """Call ``fn(ptr0, ptr1, ..., first, count, *args)`` on chunks of ``[0, units)`` in
    parallel: kernels that find their own place in the tensors (the pooled ones)."""
    ptrs = [ctypes.c_void_p(t.data_ptr()) for t in tensors]

    def call(lo: int, hi: int) -> int:
        return fn(*ptrs, ctypes.c_long(lo), ctypes.c_long(hi - lo), *args)

    _split(units, call, fn.__name__, least=2)  # a unit is a row of an image: much work
