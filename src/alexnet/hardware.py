"""What this machine is: CPU model and features, cores available, accelerators.

The one place that reads ``/proc/cpuinfo``. Everything ``auto`` decides from the hardware
(precision, loader workers, threads) starts here; :func:`alexnet.engine.execution.machine_info`
is what runs, benchmarks and reports record about the machine.
"""

from __future__ import annotations

import functools
import os
import platform
import tempfile
from pathlib import Path

import torch

# CPU features that run bf16 matrix products natively (x86: AMX tiles or AVX512-BF16
# dot products; ARM: the BF16 extension). Without them oneDNN emulates bf16 through fp32,
# which measured ~10x slower than fp32 itself on an AVX2-only CPU.
_BF16_FLAGS = ("amx_bf16", "avx512_bf16", "bf16")
# oneDNN's ISA caps (x86 names) below its bf16 ISAs: with ONEDNN_MAX_CPU_ISA set to one of
# these, bf16 is emulated even on a CPU that has it (the way to run as an AVX2-only machine
# would, or to step around a kernel bug). AVX2_VNNI_2 has bf16 where the CPU has
# avx_ne_convert (see bf16_capped_by).
_ONEDNN_CAPS_WITHOUT_BF16 = frozenset(
    {"SSE41", "AVX", "AVX2", "AVX2_VNNI", "AVX512_CORE", "AVX512_CORE_VNNI"}
)
_X86 = frozenset({"x86_64", "amd64", "i386", "i686"})
# PyTorch's thread count before anything here changes it (physical cores, or
# OMP_NUM_THREADS when set).
TORCH_DEFAULT_THREADS = torch.get_num_threads()


@functools.cache
def _cpuinfo() -> dict[str, str]:
    """The first processor's fields of /proc/cpuinfo ({} where there is none)."""
    try:
        return parse_cpuinfo(Path("/proc/cpuinfo").read_text())
    except OSError:
        return {}


def parse_cpuinfo(text: str) -> dict[str, str]:
    """The first processor block of a /proc/cpuinfo text as {field: value}."""
    fields: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip():
            if fields:
                break
            continue
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    return fields


def cpu_model() -> str:
    info = _cpuinfo()
    return (
        info.get("model name")
        or info.get("Model")
        or platform.processor()
        or platform.machine()
        or "unknown CPU"
    )


def cpu_flags() -> str:
    """The CPU feature list (x86 ``flags``, ARM ``Features``), space separated."""
    info = _cpuinfo()
    return info.get("flags") or info.get("Features") or ""


def cpu_bf16_feature() -> str | None:
    """The CPU feature for native bf16 arithmetic, whether or not oneDNN may use it."""
    flags = set(cpu_flags().split())
    return next((f for f in _BF16_FLAGS if f in flags), None)


def onednn_isa_cap() -> str | None:
    """``NAME=VALUE`` of the variable capping oneDNN's ISA (``ONEDNN_MAX_CPU_ISA``, or its
    old name ``DNNL_MAX_CPU_ISA``), value upper-cased as oneDNN compares it; None if unset."""
    for name in ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA"):
        if value := os.environ.get(name):
            return f"{name}={value.upper()}"
    return None


def bf16_capped_by() -> str | None:
    """The oneDNN ISA cap (``NAME=VALUE``) that turns this x86 CPU's native bf16 off, else None."""
    cap = onednn_isa_cap()
    if not cap or not cpu_bf16_feature() or platform.machine().lower() not in _X86:
        return None
    isa = cap.partition("=")[2]
    if isa in _ONEDNN_CAPS_WITHOUT_BF16 or (
        isa == "AVX2_VNNI_2" and "avx_ne_convert" not in cpu_flags().split()
    ):
        return cap
    return None


def cpu_bf16() -> str | None:
    """The feature that gives this CPU native bf16 arithmetic, or None (emulated: no such
    feature, or oneDNN capped below it)."""
    return None if bf16_capped_by() else cpu_bf16_feature()


def cpu_bf16_label() -> str:
    """cpu_bf16 for records: the feature, or why bf16 is emulated."""
    if native := cpu_bf16():
        return native
    if capped := bf16_capped_by():
        return f"none (emulated: {cpu_bf16_feature()} left out by {capped})"
    return "none (emulated)"


def available_cores() -> int:
    """Cores this process may run on (its affinity mask, e.g. under taskset or SLURM)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def ranks_on_this_node() -> int:
    """Processes sharing this machine's cores (torchrun's LOCAL_WORLD_SIZE)."""
    try:
        return max(1, int(os.environ.get("LOCAL_WORLD_SIZE") or 1))
    except ValueError:
        return 1


def cores_per_rank() -> int:
    return max(1, available_cores() // ranks_on_this_node())


def resolve_workers(requested: int | str, accelerator: bool = False) -> int:
    """Loader workers: ``auto`` = one decoding process per spare core of this rank (none on
    a single core); at most 8 on CPU, where training needs the other cores, and up to 32
    when an accelerator trains (decoding is then the CPU's only work; each worker holds a
    few batches in shared memory). A number is used as given."""
    if requested == "auto":
        spare = cores_per_rank() - 1
        return min(32, spare) if accelerator else min(8, spare)
    if isinstance(requested, bool) or not isinstance(requested, int) or requested < 0:
        raise ValueError(f"loader workers must be 'auto' or an integer >= 0, got {requested!r}")
    return requested


def separate_compile_cache() -> str | None:
    """Under ``ATEN_CPU_CAPABILITY``, give torch.compile's kernel cache a folder of its own.

    torch 2.14.1 caches compiled CPU kernels without that setting in their key: kernels
    built under ``ATEN_CPU_CAPABILITY=avx2`` crashed (SIGSEGV) a later run without it that
    shared the default cache. Returns the folder set, or None (no capability set, or
    ``TORCHINDUCTOR_CACHE_DIR`` already chosen). Call before anything compiles.
    """
    if not os.environ.get("ATEN_CPU_CAPABILITY") or os.environ.get("TORCHINDUCTOR_CACHE_DIR"):
        return None
    # Named by what ATen runs (an invalid value runs the CPU's best, and says so here).
    cap = torch.backends.cpu.get_cpu_capability().lower()
    path = os.path.join(
        tempfile.gettempdir(), f"torchinductor-alexnet-{getattr(os, 'getuid', lambda: 0)()}-{cap}"
    )
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = path
    return path
