"""What `auto` resolves to from the hardware; every machine fact is faked, so these mean
the same on any CPU."""

import json
import os

import pytest
import torch

from alexnet import allocator, hardware
from alexnet.cli import main
from alexnet.engine import execution

AVX2_EPYC = """processor	: 0
vendor_id	: AuthenticAMD
model name	: AMD EPYC 7B13
flags		: fpu sse sse2 avx avx2 fma

processor	: 1
model name	: AMD EPYC 7B13
flags		: fpu sse sse2 avx avx2 fma
"""
XEON_AMX = "model name\t: Intel(R) Xeon(R) Processor\nflags\t\t: avx2 avx512f avx512_bf16 amx_bf16 amx_tile\n"
GRAVITON = "processor\t: 0\nBogoMIPS\t: 2100.00\nFeatures\t: fp asimd sve bf16 i8mm\n"


@pytest.mark.parametrize(
    "text, model, bf16",
    [
        (AVX2_EPYC, "AMD EPYC 7B13", None),
        (XEON_AMX, "Intel(R) Xeon(R) Processor", "amx_bf16"),
        (GRAVITON, None, "bf16"),
        ("", None, None),
    ],
)
def test_cpu_model_and_native_bf16_from_cpuinfo(monkeypatch, text, model, bf16):
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)  # the suite may run under a cap
    monkeypatch.delenv("DNNL_MAX_CPU_ISA", raising=False)
    monkeypatch.setattr(hardware, "_cpuinfo", lambda: hardware.parse_cpuinfo(text))
    assert hardware.cpu_bf16() == bf16
    if model:
        assert hardware.cpu_model() == model
    assert hardware.cpu_model()  # never empty: falls back to the platform's name
    # avx512_bf16 as a substring of another flag must not count.
    monkeypatch.setattr(hardware, "_cpuinfo", lambda: {"flags": "avx512_bf16x avx2"})
    assert hardware.cpu_bf16() is None


@pytest.mark.parametrize(
    "cap, bf16",
    [("avx2", None), ("AVX512_CORE", None), ("AVX512_CORE_AMX", "amx_bf16"), ("", "amx_bf16")],
)
def test_a_onednn_isa_cap_below_bf16_makes_bf16_emulated(monkeypatch, cap, bf16):
    """ONEDNN_MAX_CPU_ISA=AVX2 on an AMX Xeon runs bf16 as an AVX2-only CPU would (emulated):
    auto must then choose fp32 and say why."""
    monkeypatch.setattr(hardware, "_cpuinfo", lambda: hardware.parse_cpuinfo(XEON_AMX))
    monkeypatch.setattr(hardware.platform, "machine", lambda: "x86_64")
    monkeypatch.delenv("DNNL_MAX_CPU_ISA", raising=False)
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", cap)
    assert hardware.cpu_bf16() == bf16
    auto = execution.resolve_precision("auto", torch.device("cpu"))
    assert auto.name == ("bf16" if bf16 else "fp32")
    if bf16 is None:
        assert f"ONEDNN_MAX_CPU_ISA={cap.upper()}" in auto.reason
        assert "amx_bf16 left out by" in hardware.cpu_bf16_label()
        assert "emulated" in execution.available_precisions(torch.device("cpu"))["bf16"]
    else:
        assert hardware.cpu_bf16_label() == "amx_bf16"


def test_onednn_caps_by_either_name_on_x86_only(monkeypatch):
    monkeypatch.setattr(hardware, "_cpuinfo", lambda: hardware.parse_cpuinfo(XEON_AMX))
    monkeypatch.setattr(hardware.platform, "machine", lambda: "x86_64")
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    monkeypatch.setenv("DNNL_MAX_CPU_ISA", "avx512_core")  # the old name
    assert hardware.bf16_capped_by() == "DNNL_MAX_CPU_ISA=AVX512_CORE"
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2_VNNI_2")  # bf16 with avx_ne_convert only
    assert hardware.bf16_capped_by() == "ONEDNN_MAX_CPU_ISA=AVX2_VNNI_2"
    flags = "avx2 avx512_bf16 amx_bf16 avx_ne_convert"
    monkeypatch.setattr(hardware, "_cpuinfo", lambda: {"flags": flags})
    assert hardware.bf16_capped_by() is None and hardware.cpu_bf16() == "amx_bf16"
    monkeypatch.setattr(hardware, "_cpuinfo", lambda: hardware.parse_cpuinfo(GRAVITON))
    monkeypatch.setattr(hardware.platform, "machine", lambda: "aarch64")
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")  # an x86 name means nothing on ARM
    assert hardware.cpu_bf16() == "bf16"


def test_a_cpu_capability_cap_compiles_into_its_own_cache(monkeypatch):
    # setenv first, so that undo restores the variable whatever separate_compile_cache wrote.
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", "placeholder")
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR")
    monkeypatch.delenv("ATEN_CPU_CAPABILITY", raising=False)
    assert hardware.separate_compile_cache() is None
    assert "TORCHINDUCTOR_CACHE_DIR" not in os.environ  # no cap: torch's default cache
    monkeypatch.setenv("ATEN_CPU_CAPABILITY", "avx2")
    # Named by what ATen actually runs (read once at startup, so patched here).
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX2")
    path = hardware.separate_compile_cache()
    assert path and path.endswith("-avx2") and os.environ["TORCHINDUCTOR_CACHE_DIR"] == path
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", "/chosen")  # the user's choice stands
    assert hardware.separate_compile_cache() is None
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == "/chosen"


@pytest.mark.parametrize(
    "cores, ranks, workers, threads",
    [(1, 1, 0, 1), (2, 1, 1, 2), (16, 1, 8, 16), (16, 4, 3, 4), (64, 8, 7, 8), (3, 8, 0, 1)],
)
def test_workers_and_threads_follow_the_cores_available(
    monkeypatch, cores, ranks, workers, threads
):
    monkeypatch.setattr(hardware, "available_cores", lambda: cores)
    monkeypatch.setattr(hardware, "TORCH_DEFAULT_THREADS", 64)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", str(ranks))
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert hardware.resolve_workers("auto") == workers
    assert execution.resolve_threads(0) == threads
    assert hardware.resolve_workers(3) == 3 and execution.resolve_threads(5) == 5
    with pytest.raises(ValueError, match="'auto' or an integer >= 0"):
        hardware.resolve_workers(-1)


def test_threads_respect_omp_num_threads_and_torchs_default(monkeypatch):
    monkeypatch.setattr(hardware, "available_cores", lambda: 32)
    monkeypatch.setattr(hardware, "TORCH_DEFAULT_THREADS", 16)  # 16 cores, 2 SMT threads each
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert execution.resolve_threads(0) == 16
    monkeypatch.setattr(hardware, "TORCH_DEFAULT_THREADS", 1)  # what OMP_NUM_THREADS=1 gives
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert execution.resolve_threads(0) == 1
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "")  # set but empty: one rank
    assert hardware.ranks_on_this_node() == 1


def test_info_shows_what_auto_resolves_to(capsys, monkeypatch):
    monkeypatch.setattr(hardware, "cpu_bf16", lambda: None)
    assert main(["info", "--model", "small", "--device", "cpu", "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)["execution"]
    assert plan["precision_auto"] == "fp32" and "no native bf16" in plan["precision_reason"]
    assert set(plan["precisions_available"]) == {"fp32", "bf16"}
    assert plan["eval_precision_default"] == "fp32"
    assert set(plan["lrn"]) == {"fp32", "bf16"}
    assert plan["loader_workers_auto"] == hardware.resolve_workers("auto")
    monkeypatch.setattr(hardware, "cpu_bf16", lambda: "avx512_bf16")
    assert main(["info", "--model", "small", "--device", "cpu"]) == 0
    text = capsys.readouterr().out
    assert "run.precision auto -> bf16 (auto: the CPU has native bf16 (avx512_bf16))" in text


def test_bad_workers_value_is_a_config_error():
    from alexnet.config import ConfigError, load_train_config

    assert load_train_config("imagenet-paper").data.workers == "auto"
    with pytest.raises(ConfigError, match=r"data\.workers"):
        load_train_config("demo", None, ["data.workers=many"])
    with pytest.raises(ConfigError, match=r"data\.workers must be >= 0"):
        load_train_config("demo", None, ["data.workers=-2"])


@pytest.mark.parametrize(
    "env, expect",
    [
        ({"ALEXNET_MALLOC": "system"}, "system (ALEXNET_MALLOC=system)"),
        ({"LD_PRELOAD": "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2"}, "preloaded: jemalloc"),
        ({"MALLOC_ARENA_MAX_": "2"}, "glibc, MALLOC_* settings from the environment"),
    ],
)
def test_allocator_leaves_a_users_choice_alone(monkeypatch, env, expect):
    called = []
    monkeypatch.setattr(allocator, "_state", "system")
    monkeypatch.setattr(allocator.ctypes, "CDLL", lambda *a: called.append(a))
    for key in ("ALEXNET_MALLOC", "LD_PRELOAD"):
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert allocator.configure().startswith(expect)
    assert not called  # mallopt never reached


def test_allocator_keeps_the_heap_on_glibc_and_says_so(monkeypatch):
    calls: list[tuple[int, int]] = []

    class Libc:
        def mallopt(self, param: int, value: int) -> int:
            calls.append((param, value))
            return 1

    monkeypatch.setattr(allocator, "_state", "system")
    monkeypatch.setattr(allocator.ctypes, "CDLL", lambda *a: Libc())
    monkeypatch.setattr(allocator.platform, "system", lambda: "Linux")
    monkeypatch.setattr(allocator.platform, "libc_ver", lambda: ("glibc", "2.36"))
    for key in [k for k in os.environ if k.startswith("MALLOC_")] + [
        "ALEXNET_MALLOC",
        "LD_PRELOAD",
    ]:
        monkeypatch.delenv(key, raising=False)
    monkeypatch.delenv("THP_MEM_ALLOC_ENABLE", raising=False)
    text = allocator.configure()
    assert calls == [(-4, 0), (-1, 2**31 - 1)]  # M_MMAP_MAX=0, M_TRIM_THRESHOLD=INT_MAX
    assert text == "glibc, heap kept (no mmap, no trim); THP_MEM_ALLOC_ENABLE=1"
    assert execution.execution_plan(torch.device("cpu"))["host_memory"] == text
    # a failing mallopt is reported, not hidden
    monkeypatch.setattr(allocator, "_state", "system")
    Libc.mallopt = lambda self, p, v: 0  # type: ignore[method-assign]
    assert allocator.configure().startswith("system (mallopt failed)")
