"""The GPU halves of ``alexnet benchmark lrn|data|e2e --device cuda``.

GPU work is asynchronous: every timed call ends with ``torch.cuda.synchronize()``, and a
call runs several iterations so the host's launch and sync costs are a small share of it.
Sides are timed in interleaved rounds as on CPU (:func:`~alexnet.bench.benchmark.interleaved`).
"""

from __future__ import annotations

import functools
import json
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..engine.execution import machine_info
from ..network.lrn import LocalResponseNorm, lrn_pointwise, triton_available


def _repeat(fn: Callable[[], Any], n: int) -> Callable[[], None]:
    def run() -> None:
        for _ in range(n):
            fn()

    return run


def gpu_info(dev: torch.device) -> dict[str, Any]:
    p = torch.cuda.get_device_properties(dev)
    return {
        "name": p.name,
        "memory_gib": round(p.total_memory / 2**30, 1),
        "multiprocessors": p.multi_processor_count,
        "capability": f"{p.major}.{p.minor}",
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version(),
    }


# --------------------------------------------------------------------------------------
# LRN


def bench_lrn_cuda(
    dev: torch.device, shape: tuple[int, int, int, int] = (128, 96, 55, 55), repeats: int = 20
) -> dict[str, Any]:
    """Forward + backward of PyTorch's LRN (its avg_pool3d path, in both layouts) and ours
    (the default, and the pointwise form under torch.compile that inference may use),
    fp32 and bf16 data. The first calls (untimed) compile."""
    from ..network import native
    from .benchmark import _lrn_step, _torch_lrn_for_bf16, interleaved, medians

    torch.manual_seed(0)
    torch_bf16, torch_bf16_mode = _torch_lrn_for_bf16(dev)
    # The pointwise form under torch.compile, forward + backward (its first calls compile).
    compiled = torch.compile(
        functools.partial(lrn_pointwise, size=5, alpha=1e-4 / 5, beta=0.75, k=2.0, groups=1)
    )
    iters = 10
    x = torch.randn(shape, device=dev).contiguous(memory_format=torch.channels_last)
    g = torch.randn(shape, device=dev).contiguous(memory_format=torch.channels_last)
    fns: dict[str, Callable[[], None]] = {}
    for dtype, tag in ((torch.float32, ""), (torch.bfloat16, "_bf16")):
        xc = x.to(dtype).requires_grad_()
        gc = g.to(dtype)
        xn = xc.detach().contiguous().requires_grad_()
        theirs = torch_bf16 if dtype == torch.bfloat16 else LocalResponseNorm(impl="torch")
        fns[f"torch{tag}"] = _lrn_step(theirs, xc, gc)
        fns[f"torch_nchw{tag}"] = _lrn_step(theirs, xn, gc.contiguous())
        fns[f"ours{tag}"] = _lrn_step(LocalResponseNorm(), xc, gc)
        fns[f"pointwise{tag}"] = _lrn_step(compiled, xc, gc)
        if triton_available():  # the experimental fused kernels, beside the default
            fns[f"triton{tag}"] = _lrn_step(LocalResponseNorm(impl="triton"), xc, gc)
    fns = {k: _repeat(f, iters) for k, f in fns.items()}
    ms = {k: v * 1e3 / iters for k, v in medians(interleaved(fns, repeats, 2, sync=True)).items()}
    best_torch = min(ms["torch"], ms["torch_nchw"])
    best_torch_bf16 = min(ms["torch_bf16"], ms["torch_nchw_bf16"])
    return {
        "benchmark": "lrn",
        "machine": machine_info(),
        "device": str(dev),
        "gpu": gpu_info(dev),
        "shape": list(shape),
        "ms": ms,
        "ratio": best_torch / ms["ours"],
        "ratio_settings": "PyTorch's LRN in its faster layout / ours on channels_last, fp32, "
        "forward + backward",
        "ratio_bf16": best_torch_bf16 / ms["ours_bf16"],
        "ratio_triton": best_torch / ms["triton"] if "triton" in ms else None,
        "ratio_triton_bf16": best_torch_bf16 / ms["triton_bf16"] if "triton" in ms else None,
        "torch_bf16_mode": torch_bf16_mode,
        "ours_path": {
            "float32": native.lrn_path(dev, None),
            "bfloat16": native.lrn_path(dev, torch.bfloat16),
        },
    }


def format_lrn_cuda(r: dict[str, Any]) -> str:
    ms = r["ms"]
    lines = [
        f"LRN forward+backward, input {tuple(r['shape'])} — {r['gpu']['name']}, torch "
        f"{r['machine']['torch']}, CUDA {r['gpu']['cuda']}; ms per call, median of rounds",
        f"  {'':36} {'fp32':>8} {'bf16':>8}",
    ]
    for key, label in (
        ("torch", "PyTorch's LRN, channels_last"),
        ("torch_nchw", "PyTorch's LRN, NCHW"),
        ("ours", "alexnet LocalResponseNorm (default)"),
        ("pointwise", "alexnet pointwise form, compiled"),
        ("triton", "alexnet fused Triton kernels"),
    ):
        if key in ms:
            lines.append(f"  {label:36} {ms[key]:8.3f} {ms[key + '_bf16']:8.3f}")
    lines.append(f"  default path: {r['ours_path']['float32']}; {r['ours_path']['bfloat16']}")
    lines.append(
        f"  ratio (PyTorch's faster layout / ours): fp32 {r['ratio']:.2f}x, bf16 {r['ratio_bf16']:.2f}x"
    )
    if r.get("ratio_triton"):
        lines.append(
            f"  ratio (PyTorch's faster layout / Triton kernels): fp32 {r['ratio_triton']:.2f}x, "
            f"bf16 {r['ratio_triton_bf16']:.2f}x"
        )
    return "\n".join(lines)


# --------------------------------------------------------------------------------------
# Data: a prepared directory, replicated; CPU workers vs nvJPEG


def replicate_prepared(src: str | Path, copies: int, dst: str | Path) -> Path:
    """A prepared directory whose train split is ``src``'s, ``copies`` times over (same
    labels, blob and index repeated): enough batches for a GPU to reach a steady state on
    a few thousand sample images."""
    src, dst = Path(src), Path(dst)
    dst.mkdir(parents=True, exist_ok=True)
    meta = json.loads((src / "meta.json").read_text())
    if meta.get("kind") != "jpeg" or "train" not in meta["splits"]:
        raise ValueError(f"{src}: needs a prepared JPEG directory with a train split")
    shutil.copy(src / "mean.npy", dst / "mean.npy")
    index = np.load(src / "train.index.npy")
    # The index repeated over the same blob (linked, not copied): the same files read in
    # the same way, with no gigabytes written.
    tiled = np.concatenate([index] * copies)
    np.save(dst / "train.index.npy", tiled)
    try:
        (dst / "train.jpg").symlink_to((src / "train.jpg").resolve())
    except OSError:  # no symlinks here
        shutil.copy(src / "train.jpg", dst / "train.jpg")
    split = meta["splits"]["train"]
    meta["splits"] = {
        "train": {
            **split,
            "count": len(tiled),
            "class_counts": [c * copies for c in split["class_counts"]],
        }
    }
    (dst / "meta.json").write_text(json.dumps(meta))
    return dst


def _loader(data: Any, batch: int, dev: torch.device, decode: str, workers: int | str) -> Any:
    from ..data.dataset import LoaderSpec, make_loader

    return make_loader(
        data, "train", LoaderSpec(train=True), batch, dev, data.preprocessing(crop=224),
        workers=workers, decode=decode,
    )  # fmt: skip


def _endless(loader: Any) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    epoch = 0
    while True:
        loader.sampler.set_epoch(epoch)
        yield from loader
        epoch += 1


def _decode_rates(
    data: Any, batch: int, dev: torch.device, steps: int, warmup: int, workers: int | str
) -> dict[str, dict[str, Any]]:
    """Inputs on the device per second, for each place JPEGs can be decoded."""
    from ..hardware import resolve_workers

    out: dict[str, dict[str, Any]] = {}
    for decode in ("cpu", "cuda"):
        # nvJPEG: the workers only read bytes, a few keep up.
        n_workers = resolve_workers(workers, accelerator=True) if decode == "cpu" else 4
        loader = _loader(data, batch, dev, decode, n_workers)
        batches = _endless(loader)
        try:
            for _ in range(warmup):
                next(batches)
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            for _ in range(steps):
                next(batches)
            torch.cuda.synchronize()
            seconds = time.perf_counter() - t0
            out[decode] = {"workers": n_workers, "images_per_s": steps * batch / seconds}
        except Exception as err:  # e.g. no nvJPEG in this torchvision: say so, go on
            out[decode] = {"workers": n_workers, "error": f"{type(err).__name__}: {err}"[:300]}
        finally:
            del batches, loader
    return out


def bench_data_cuda(
    prepared: str, dev: torch.device, copies: int = 20, batch: int = 256, steps: int = 200,
    workers: int | str = "auto",
) -> dict[str, Any]:  # fmt: skip
    """Training inputs on the GPU per second from a prepared directory: CPU workers
    (simplejpeg) vs nvJPEG on the GPU, no model."""
    from ..data.dataset import Prepared

    with tempfile.TemporaryDirectory() as tmp:
        data = Prepared(replicate_prepared(prepared, copies, tmp))
        rates = _decode_rates(data, batch, dev, steps, warmup=20, workers=workers)
        n = len(data.split("train"))
    ok = [k for k in rates if "images_per_s" in rates[k]]
    best = max(ok, key=lambda k: rates[k]["images_per_s"]) if ok else None
    return {
        "benchmark": "data",
        "machine": machine_info(),
        "device": str(dev),
        "gpu": gpu_info(dev),
        "prepared": prepared,
        "images": n,
        "batch": batch,
        "steps": steps,
        "decode": rates,
        "fastest": best,
        "ratio": rates["cuda"]["images_per_s"] / rates["cpu"]["images_per_s"]
        if len(ok) == 2
        else None,
        "ratio_settings": "nvJPEG / CPU workers, training inputs on the GPU per second",
    }


def format_data_cuda(r: dict[str, Any]) -> str:
    lines = [
        f"Training inputs on the GPU, batch {r['batch']}, {r['steps']} batches, {r['images']:,} "
        f"images ({r['prepared']} replicated) — {r['gpu']['name']}, {r['machine']['cores']} CPU cores",
    ]
    for decode, row in r["decode"].items():
        where = "CPU workers (simplejpeg)" if decode == "cpu" else "nvJPEG on the GPU"
        if "error" in row:
            lines.append(f"  {where:26} {row['workers']:2} workers  failed: {row['error']}")
        else:
            lines.append(
                f"  {where:26} {row['workers']:2} workers  {row['images_per_s']:9.0f} images/s"
            )
    if r["ratio"] is not None:
        lines.append(f"  ratio nvJPEG / CPU workers: {r['ratio']:.2f}x; fastest: {r['fastest']}")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------
# End to end: prepared JPEGs -> training step, next to the training step alone


def bench_e2e_cuda(
    prepared: str, dev: torch.device, variant: str = "paper", batch: int = 256,
    steps: int = 600, copies: int = 100, workers: int | str = "auto",
    decodes: tuple[str, ...] = ("cpu", "cuda"), precision: str = "bf16",
) -> dict[str, Any]:  # fmt: skip
    """The paper's training step (§5 SGD, ``precision`` autocast, channels_last) fed by the
    loader from a replicated prepared directory, for each decode path, and the same step on
    a batch already on the GPU. Each side runs ``steps`` steps in one stretch after a
    warm-up (the loader's queue filled, cuDNN's algorithms chosen)."""
    from ..config import load_train_config
    from ..data.dataset import Prepared
    from ..engine.optim import build_optimizer
    from ..hardware import resolve_workers
    from ..network.model import build_model

    torch.backends.cudnn.benchmark = True
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}[precision]
    cfg = load_train_config("imagenet-paper", None, [f"model.variant={variant}"])
    torch.manual_seed(0)
    model = build_model(cfg.model).to(dev, memory_format=torch.channels_last)
    opt = build_optimizer(model, cfg.optim)
    scaler = torch.amp.GradScaler("cuda") if precision == "fp16" else None

    def step(x: torch.Tensor, y: torch.Tensor) -> None:
        with torch.autocast(dev.type, dtype=dtype, enabled=dtype is not None):
            loss = nn.functional.cross_entropy(model(x).float(), y)
        opt.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
        else:
            loss.backward()
            opt.step()

    def run(batches: Iterator[Any], n: int) -> float:
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(n):
            step(*next(batches))
        torch.cuda.synchronize()
        return n * batch / (time.perf_counter() - t0)

    x = torch.randn(batch, 3, 224, 224, device=dev).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 1000, (batch,), device=dev)
    warmup = max(50, steps // 10)
    result: dict[str, Any] = {"e2e": {}}
    with tempfile.TemporaryDirectory() as tmp:
        data = Prepared(replicate_prepared(prepared, copies, tmp))
        model_only = run(iter(lambda: (x, y), None), warmup)  # warm-up
        model_only = run(iter(lambda: (x, y), None), steps)
        for decode in decodes:
            n_workers = resolve_workers(workers, accelerator=True) if decode == "cpu" else 4
            loader = _loader(data, batch, dev, decode, n_workers)
            batches = _endless(loader)
            try:
                run(batches, warmup)
                rate = run(batches, steps)
                result["e2e"][decode] = {"workers": n_workers, "images_per_s": rate}
            except Exception as err:
                result["e2e"][decode] = {
                    "workers": n_workers, "error": f"{type(err).__name__}: {err}"[:300]
                }  # fmt: skip
            finally:
                del batches, loader
        model_after = run(iter(lambda: (x, y), None), steps)  # the GPU's clocks, unchanged?
        n = len(data.split("train"))
    rates = {k: v["images_per_s"] for k, v in result["e2e"].items() if "images_per_s" in v}
    best = max(rates, key=rates.__getitem__) if rates else None
    model_rate = statistics.mean([model_only, model_after])
    return {
        "benchmark": "e2e",
        "machine": machine_info(),
        "device": str(dev),
        "gpu": gpu_info(dev),
        "variant": variant,
        "precision": precision,
        "batch": batch,
        "steps": steps,
        "images": n,
        **result,
        "model_only_images_per_s": model_rate,
        "model_only_rounds": [model_only, model_after],
        "fastest_decode": best,
        "e2e_images_per_s": rates[best] if best else None,
        "ratio": (rates[best] / model_rate) if best else None,
        "ratio_settings": "e2e (fastest decode) / model-only training images/s",
    }


def format_e2e_cuda(r: dict[str, Any]) -> str:
    lines = [
        f"End to end on {r['gpu']['name']} ({r['machine']['cores']} CPU cores) — {r['variant']}, "
        f"{r['precision']}, channels_last, batch {r['batch']}, {r['steps']} timed steps, "
        f"{r['images']:,} prepared images",
    ]
    for decode, row in r["e2e"].items():
        where = "CPU workers" if decode == "cpu" else "nvJPEG"
        if "error" in row:
            lines.append(
                f"  prepared JPEG ({where}, {row['workers']} workers): failed: {row['error']}"
            )
        else:
            lines.append(
                f"  prepared JPEG -> training step ({where}, {row['workers']} workers) "
                f"{row['images_per_s']:9.0f} images/s"
            )
    lines.append(
        f"  training step on a batch already on the GPU           {r['model_only_images_per_s']:9.0f} images/s"
    )
    if r["ratio"] is not None:
        lines.append(f"  ratio e2e ({r['fastest_decode']}) / model-only: {r['ratio']:.2f}")
    return "\n".join(lines)
