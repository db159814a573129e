"""``alexnet benchmark``: figures measured side by side with their reference in one run.

Every result carries the machine, torch version, thread count and settings, so a number in
the docs can be traced to the command and hardware that produced it.
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from .lrn import LocalResponseNorm
from .model import build_model


def machine_info() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    info: dict[str, Any] = {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }
    return info


def time_it(fn: Callable[[], Any], repeats: int = 5, warmup: int = 1, sync: bool = False) -> float:
    """Median seconds per call of ``fn`` after ``warmup`` untimed calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        if sync:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if sync:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _lrn_step(lrn: nn.Module, x: torch.Tensor, g: torch.Tensor) -> Callable[[], None]:
    def step() -> None:
        x.grad = None
        lrn(x).backward(g)

    return step


def _small_train_step(norm_impl: str | None, batch: int) -> Callable[[], None]:
    """One SGD step of the CIFAR-sized AlexNet with LRN off, ours, or PyTorch's."""
    torch.manual_seed(0)
    model = build_model(
        variant="small", num_classes=10, norm="none" if norm_impl is None else "lrn"
    )
    if norm_impl is not None:
        for m in model.modules():
            if isinstance(m, LocalResponseNorm):
                m.impl = norm_impl
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x = torch.randn(batch, 3, 32, 32)
    y = torch.randint(0, 10, (batch,))

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()

    return step


def bench_lrn(
    shape: tuple[int, int, int, int] = (128, 96, 55, 55), repeats: int = 5
) -> dict[str, Any]:
    """Our LRN vs ``torch.nn.functional.local_response_norm``, forward + backward, fp32."""
    torch.manual_seed(0)
    x = torch.randn(shape, requires_grad=True)
    g = torch.randn(shape)
    ref = time_it(_lrn_step(LocalResponseNorm(impl="torch"), x, g), repeats)
    ours = time_it(_lrn_step(LocalResponseNorm(impl="fast"), x, g), repeats)
    batch = 128
    step_none = time_it(_small_train_step(None, batch), repeats)
    step_torch = time_it(_small_train_step("torch", batch), repeats)
    step_fast = time_it(_small_train_step("fast", batch), repeats)
    return {
        "benchmark": "lrn",
        "machine": machine_info(),
        "shape": list(shape),
        "dtype": "float32",
        "torch_lrn_ms": ref * 1e3,
        "ours_lrn_ms": ours * 1e3,
        "ratio": ref / ours,
        "small_model_train_step": {
            "batch": batch,
            "no_lrn_images_per_s": batch / step_none,
            "torch_lrn_images_per_s": batch / step_torch,
            "ours_lrn_images_per_s": batch / step_fast,
        },
    }


def format_lrn(r: dict[str, Any]) -> str:
    s = r["small_model_train_step"]
    m = r["machine"]
    return "\n".join(
        [
            f"LRN forward+backward, input {tuple(r['shape'])} fp32 — {m['cpu']} ({m['cpu_capability']}), "
            f"{m['threads']} threads, torch {m['torch']}",
            f"  torch.nn.functional.local_response_norm  {r['torch_lrn_ms']:9.1f} ms",
            f"  alexnet LocalResponseNorm                {r['ours_lrn_ms']:9.1f} ms",
            f"  ratio (PyTorch / ours)                   {r['ratio']:9.2f}x",
            f"Small AlexNet training step, batch {s['batch']}, 32x32 (images/s)",
            f"  without LRN                              {s['no_lrn_images_per_s']:9.0f}",
            f"  PyTorch's LRN                            {s['torch_lrn_images_per_s']:9.0f}",
            f"  our LRN                                  {s['ours_lrn_images_per_s']:9.0f}",
        ]
    )
