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


# --------------------------------------------------------------------------------------
# Data pipeline


def _torchvision_reference(files: list[str], n: int, offset: int = 0) -> float:
    """(a) the torchvision reference pipeline on original JPEGs, images/s on one core."""
    from PIL import Image
    from torchvision import transforms as tvt

    tf = tvt.Compose(
        [
            tvt.RandomResizedCrop(224),
            tvt.RandomHorizontalFlip(),
            tvt.ToTensor(),
            tvt.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
        ]
    )
    t0 = time.perf_counter()
    for i in range(n):
        with Image.open(files[(offset + i) % len(files)]) as im:
            tf(im.convert("RGB"))
    return n / (time.perf_counter() - t0)


def _ours(loader: Any, n: int, epoch: int) -> float:
    """(b) our training pipeline: prepared JPEG -> decode, crop, flip (uint8) -> batch ->
    mean-image subtraction + PCA noise -> float32 channels_last, one core."""
    done = 0
    t0 = time.perf_counter()
    while done < n:
        loader.sampler.set_epoch(epoch)
        for x, _ in loader:
            done += x.shape[0]
            if done >= n:
                break
        epoch += 1
    return done / (time.perf_counter() - t0)


def bench_data(
    source: str | None = None, n: int = 1024, rounds: int = 3, workers: int = 2
) -> dict[str, Any]:
    """Images/s per core of the torchvision reference (a) and our pipeline (b), and b/a.

    The two sides alternate for ``rounds`` rounds on the same images; medians are reported.
    """
    import glob
    import tempfile
    from pathlib import Path

    from .data import LoaderSpec, Prepared, make_loader
    from .prepare import prepare

    if source is None:  # the project's shared samples: ../shared beside the checkout
        here = Path(__file__).resolve().parents[2]
        candidates = [p.parent / "shared/data/imagenet-samples" for p in (Path.cwd(), here)]
        source = str(next((c for c in candidates if c.is_dir()), candidates[0]))
    if not Path(source).is_dir():
        raise FileNotFoundError(f"benchmark images not found: {source} (pass --source DIR)")
    files = sorted(
        f for f in glob.glob(str(Path(source) / "**" / "*"), recursive=True) if Path(f).is_file()
    )
    threads = torch.get_num_threads()
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        summary = prepare(source, tmp, workers=workers, progress=False)
        prep_s = time.perf_counter() - t0
        torch.set_num_threads(1)
        try:
            loader = make_loader(
                Prepared(tmp),
                "train",
                LoaderSpec(crop=224, train=True),
                128,
                torch.device("cpu"),
                workers=0,
            )
            _ours(loader, 256, epoch=1000)  # warm-up: page cache, allocator
            ref, ours = [], []
            for r in range(rounds):
                ref.append(_torchvision_reference(files, max(100, n // 4), offset=r * 97))
                ours.append(_ours(loader, n, epoch=r))
        finally:
            torch.set_num_threads(threads)
    a, b = statistics.median(ref), statistics.median(ours)
    return {
        "benchmark": "data",
        "machine": machine_info(),
        "source": source,
        "images": len(files),
        "rounds": rounds,
        "reference_images_per_s_per_core": a,
        "ours_images_per_s_per_core": b,
        "reference_rounds": ref,
        "ours_rounds": ours,
        "ratio": b / a,
        "prepare": {
            "workers": workers,
            "images_per_s": summary["written"] / prep_s,
            "seconds": prep_s,
        },
    }


def format_data(r: dict[str, Any]) -> str:
    m = r["machine"]
    return "\n".join(
        [
            f"Data pipeline, one core, median of {r['rounds']} rounds — {m['cpu']} ({m['cpu_capability']}), torch {m['torch']}",
            f"  {r['images']} images from {r['source']}",
            f"  (a) torchvision: PIL decode + RandomResizedCrop(224) + flip + ToTensor + Normalize  {r['reference_images_per_s_per_core']:7.0f} images/s",
            f"  (b) ours: prepared JPEG -> crop/flip uint8 -> batch -> mean image + PCA noise     {r['ours_images_per_s_per_core']:7.0f} images/s",
            f"  ratio b/a                                                                       {r['ratio']:7.2f}x",
            f"  alexnet prepare, {r['prepare']['workers']} workers                                                   {r['prepare']['images_per_s']:7.0f} images/s",
        ]
    )
