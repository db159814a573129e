"""Host memory for big tensors: keep it mapped between training steps.

An AlexNet step on CPU allocates and frees about 1.4 GB of activations and gradients at
batch 128. glibc serves every block over 32 MB with a fresh ``mmap`` and returns it to the
kernel on free, so each step touches every one of those pages for the first time again:
~350,000 page faults and 0.3-0.5 s of kernel time per step on a 2-core Xeon, more than
the whole torchvision step at batch 128 in bf16 (benchmarks/README.md, "Host memory").

:func:`configure` (called by the ``alexnet`` command before torch loads) does two things,
each skipped where the user already chose:
- ``THP_MEM_ALLOC_ENABLE=1``: PyTorch backs large CPU tensors with transparent huge pages
  (512x fewer faults where the kernel allows ``madvise`` huge pages);
- glibc ``mallopt``: no mmap for large blocks and no trimming of the heap, so freed
  activations are reused by the next step instead of being unmapped. The process keeps its
  peak heap until it exits, which a training or evaluation process reaches every step
  anyway.

``ALEXNET_MALLOC=system`` leaves glibc as it is; an allocator in ``LD_PRELOAD`` (jemalloc,
tcmalloc, mimalloc) or ``MALLOC_*_`` variables in the environment are left alone too.
Library users who want the same call :func:`configure` before importing torch.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import platform
import sys

# glibc's mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_INT_MAX = 2**31 - 1
_PRELOADED = ("jemalloc", "tcmalloc", "mimalloc")

_state = "system"


def configure() -> str:
    """Apply the settings above once per process; returns :func:`describe`'s text."""
    global _state
    os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")
    if _state != "system":
        return describe()
    preload = os.environ.get("LD_PRELOAD", "")
    choice = os.environ.get("ALEXNET_MALLOC", "").strip().lower()
    if choice not in {"", "system", "0", "off", "heap", "1", "on"}:
        print(
            f"alexnet: ALEXNET_MALLOC={choice!r} is not a setting (use 'system' to leave "
            "glibc as it is); keeping the heap",
            file=sys.stderr,
        )
    if choice in {"system", "0", "off"}:
        _state = "system (ALEXNET_MALLOC=system)"
    elif any(name in preload for name in _PRELOADED):
        _state = "preloaded: " + next(n for n in _PRELOADED if n in preload)
    elif any(k.startswith("MALLOC_") and k.endswith("_") for k in os.environ):
        _state = "glibc, MALLOC_* settings from the environment"
    elif platform.system() == "Linux" and platform.libc_ver()[0] == "glibc":
        try:
            mallopt = ctypes.CDLL(None).mallopt
            ok = mallopt(_M_MMAP_MAX, 0) == 1 and mallopt(_M_TRIM_THRESHOLD, _INT_MAX) == 1
        except (OSError, AttributeError):
            ok = False
        _state = "glibc, heap kept (no mmap, no trim)" if ok else "system (mallopt failed)"
    return describe()


def describe() -> str:
    """One line for run records: the malloc policy and whether huge pages are asked for."""
    thp = os.environ.get("THP_MEM_ALLOC_ENABLE")
    return f"{_state}; THP_MEM_ALLOC_ENABLE={thp if thp is not None else 'unset'}"


def release_free() -> None:
    """Give the heap's free pages back to the kernel now (glibc ``malloc_trim``), e.g. so a
    benchmark can see what one step allocates; a no-op elsewhere."""
    if platform.system() == "Linux" and platform.libc_ver()[0] == "glibc":
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None).malloc_trim(0)
