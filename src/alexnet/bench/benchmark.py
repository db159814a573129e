"""``alexnet benchmark``: figures measured side by side with their reference in one run.

Every result carries the machine, torch version, thread count and settings, so a number in
the docs can be traced to the command and hardware that produced it.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from .. import allocator
from ..atomic import write_json
from ..engine.execution import machine_info
from ..network.lrn import LocalResponseNorm
from ..network.model import build_model


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


def interleaved(
    fns: dict[Any, Callable[[], Any]], repeats: int, warmup: int = 1, sync: bool = False
) -> dict[Any, list[float]]:
    """Seconds per call of each function in every round, timed in alternating rounds so
    that load from other processes on a shared machine affects every side alike."""
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times: dict[Any, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            times[k].append(time_it(fn, repeats=1, warmup=0, sync=sync))
    return times


def medians(times: dict[Any, list[float]]) -> dict[Any, float]:
    return {k: statistics.median(v) for k, v in times.items()}


def _lrn_step(
    lrn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, g: torch.Tensor
) -> Callable[[], None]:
    def step() -> None:
        x.grad = None
        lrn(x).backward(g)

    return step


def _small_train_step(norm_impl: str | None, batch: int) -> Callable[[], None]:
    """One SGD step of the CIFAR-sized AlexNet (channels_last) with LRN off or one LRN impl."""
    torch.manual_seed(0)
    model = build_model(
        variant="small", num_classes=10, norm="none" if norm_impl is None else "lrn"
    ).to(memory_format=torch.channels_last)
    if norm_impl is not None:
        for m in model.modules():
            if isinstance(m, LocalResponseNorm):
                m.impl = norm_impl
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x = torch.randn(batch, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (batch,))

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()

    return step


LRN_IMPLS = ("torch", "matmul", "fast")


def _torch_lrn_for_bf16(
    device: torch.device | None = None,
) -> tuple[Callable[[torch.Tensor], torch.Tensor], str]:
    """PyTorch's LRN on bf16 data: as is where this torch has bf16 kernels for it, else (CPU
    avg_pool3d has none in torch 2.x) through float32 and back, as a bf16 model must."""
    lrn = LocalResponseNorm(impl="torch")
    probe = torch.randn(1, 8, 2, 2, dtype=torch.bfloat16, device=device, requires_grad=True)
    try:
        lrn(probe).sum().backward()
        return lrn, "bfloat16"
    except (NotImplementedError, RuntimeError):
        return (lambda t: lrn(t.float()).to(t.dtype)), "float32 upcast (no bf16 kernel)"


def bench_lrn(
    shape: tuple[int, int, int, int] = (128, 96, 55, 55), repeats: int = 5
) -> dict[str, Any]:
    """Our LRN vs ``torch.nn.functional.local_response_norm``, forward + backward, fp32,
    channels_last (the training layout): PyTorch's, our banded-matmul path and our default
    (the fused C kernel where it is available); then the same on bf16 data, as autocast
    hands it to LRN (ours returns bf16 and computes in float32)."""
    torch.manual_seed(0)
    x = torch.randn(shape).contiguous(memory_format=torch.channels_last).requires_grad_()
    g = torch.randn(shape).contiguous(memory_format=torch.channels_last)
    x_nchw = x.detach().contiguous().requires_grad_()
    fns = {impl: _lrn_step(LocalResponseNorm(impl=impl), x, g) for impl in LRN_IMPLS}
    # PyTorch's LRN is much slower on channels_last; compare against its better layout.
    fns["torch_nchw"] = _lrn_step(LocalResponseNorm(impl="torch"), x_nchw, g.contiguous())
    # bf16: PyTorch's only in its faster layout (NCHW, per the fp32 rows) to bound the run
    # time; "matmul" is the float32 fallback bf16 took before it had a kernel.
    xb = x.detach().bfloat16().requires_grad_()  # keeps channels_last
    gb = g.bfloat16()
    torch_bf16, torch_bf16_mode = _torch_lrn_for_bf16()
    xb_nchw = xb.detach().contiguous().requires_grad_()
    fns["torch_nchw_bf16"] = _lrn_step(torch_bf16, xb_nchw, gb.contiguous())
    fns["matmul_bf16"] = _lrn_step(LocalResponseNorm(impl="matmul"), xb, gb)
    fns["fast_bf16"] = _lrn_step(LocalResponseNorm(impl="fast"), xb, gb)
    lrn = medians(interleaved(fns, repeats))
    best_torch = min(lrn["torch"], lrn["torch_nchw"])
    batch = 128
    # None: no LRN at all
    small = {str(impl): _small_train_step(impl, batch) for impl in (None, *LRN_IMPLS)}
    steps = medians(interleaved(small, repeats))
    return {
        "benchmark": "lrn",
        "machine": machine_info(),
        "shape": list(shape),
        "dtype": "float32",
        "layout": "channels_last",
        "torch_lrn_ms": lrn["torch"] * 1e3,
        "torch_lrn_nchw_ms": lrn["torch_nchw"] * 1e3,
        "matmul_lrn_ms": lrn["matmul"] * 1e3,
        "ours_lrn_ms": lrn["fast"] * 1e3,
        "ratio": best_torch / lrn["fast"],
        "ratio_settings": "PyTorch's LRN in its faster layout / ours on channels_last",
        "bf16": {
            "torch_mode": torch_bf16_mode,
            "torch_lrn_nchw_ms": lrn["torch_nchw_bf16"] * 1e3,
            "matmul_lrn_ms": lrn["matmul_bf16"] * 1e3,
            "ours_lrn_ms": lrn["fast_bf16"] * 1e3,
            "ratio": lrn["torch_nchw_bf16"] / lrn["fast_bf16"],
            "ratio_settings": "PyTorch's LRN on bf16 data in NCHW / ours on bf16 channels_last",
            "ours_fp32_over_bf16": lrn["fast"] / lrn["fast_bf16"],
        },
        "small_model_train_step": {
            "batch": batch,
            "no_lrn_images_per_s": batch / steps["None"],
            "torch_lrn_images_per_s": batch / steps["torch"],
            "matmul_lrn_images_per_s": batch / steps["matmul"],
            "ours_lrn_images_per_s": batch / steps["fast"],
        },
    }


def format_lrn(r: dict[str, Any]) -> str:
    s = r["small_model_train_step"]
    m = r["machine"]
    b = r["bf16"]
    return "\n".join(
        [
            f"LRN forward+backward, input {tuple(r['shape'])} fp32 channels_last — {m['cpu']} "
            f"({m['cpu_capability']}), {m['threads']} threads, torch {m['torch']}; {m['native']}",
            f"  torch.nn.functional.local_response_norm  {r['torch_lrn_ms']:9.1f} ms",
            f"    the same on an NCHW copy               {r['torch_lrn_nchw_ms']:9.1f} ms",
            f"  alexnet, banded-matmul path              {r['matmul_lrn_ms']:9.1f} ms",
            f"  alexnet LocalResponseNorm (default)      {r['ours_lrn_ms']:9.1f} ms",
            f"  ratio (PyTorch's faster layout / ours)   {r['ratio']:9.2f}x",
            f"The same on bf16 data (ours: bf16 in and out, float32 math); PyTorch's LRN via "
            f"{b['torch_mode']}",
            f"  PyTorch's LRN on an NCHW copy            {b['torch_lrn_nchw_ms']:9.1f} ms",
            f"  alexnet, float32 fallback (matmul)       {b['matmul_lrn_ms']:9.1f} ms",
            f"  alexnet LocalResponseNorm (default)      {b['ours_lrn_ms']:9.1f} ms",
            f"  ratio (PyTorch's NCHW / ours)            {b['ratio']:9.2f}x",
            f"  ours fp32 / ours bf16                    {b['ours_fp32_over_bf16']:9.2f}x",
            f"Small AlexNet training step, batch {s['batch']}, 32x32, channels_last (images/s)",
            f"  without LRN                              {s['no_lrn_images_per_s']:9.0f}",
            f"  PyTorch's LRN                            {s['torch_lrn_images_per_s']:9.0f}",
            f"  our banded-matmul LRN                    {s['matmul_lrn_images_per_s']:9.0f}",
            f"  our LRN (default)                        {s['ours_lrn_images_per_s']:9.0f}",
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

    from ..data.dataset import LoaderSpec, Prepared, make_loader
    from ..data.prepare import prepare

    if source is None:  # the project's shared samples: ../shared beside the checkout
        here = Path(__file__).resolve().parents[3]
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
            data = Prepared(tmp)
            loader = make_loader(
                data, "train", LoaderSpec(train=True), 128, torch.device("cpu"),
                data.preprocessing(crop=224), workers=0,
            )  # fmt: skip
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


# --------------------------------------------------------------------------------------
# Model: training and inference throughput next to torchvision's AlexNet


def matmul_peak_gflops(
    n: int = 2048, repeats: int = 5, dtype: torch.dtype = torch.float32
) -> float:
    """This machine's measured dense GEMM rate (the reference for "fraction of peak"), on
    square matrices of side ``n``, or smaller where one product already takes over 50 ms
    (emulated bf16 runs a 2048 product for a minute; the rate has settled long before)."""
    side = min(256, n)
    while side < n:
        a = torch.randn(side, side, dtype=dtype)
        t0 = time.perf_counter()
        a @ a
        if time.perf_counter() - t0 > 0.05:
            break
        side *= 2
    a = torch.randn(side, side, dtype=dtype)
    b = torch.randn(side, side, dtype=dtype)
    t = time_it(lambda: a @ b, repeats=repeats)
    return 2 * side**3 / t / 1e9


def _rss_mb() -> float:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError):  # not Linux: the high-water mark is the best we have
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _step_peak_mb(fn: Callable[[], Any], cuda: bool) -> float:
    """Peak memory one call of ``fn`` adds: CUDA's allocator peak, or on CPU the highest
    resident set sampled every millisecond during the call minus the RSS before it (free heap
    pages are released first: the heap is kept between steps, see alexnet/allocator.py)."""
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        fn()
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - base) / 2**20
    import threading

    allocator.release_free()
    base, peak, done = _rss_mb(), [0.0], threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], _rss_mb())
            done.wait(0.001)

    t = threading.Thread(target=sample, daemon=True)
    t.start()
    try:
        fn()
    finally:
        done.set()
        t.join()
    return max(peak[0], _rss_mb()) - base


def _model_step(
    name: str, precision: str, channels_last: bool, batch: int, device: torch.device, train: bool
) -> Callable[[], None]:
    import torchvision

    torch.manual_seed(0)
    if name == "torchvision":
        model = torchvision.models.alexnet()
    elif name == "paper-direct":  # the paper's network with PyTorch's conv kernels only
        model = build_model(variant="paper", conv_impl="direct")
    elif name == "paper-triton":  # the paper's network with the fused Triton LRN (GPUs)
        model = build_model(variant="paper")
        for m in model.modules():
            if isinstance(m, LocalResponseNorm):
                m.impl = "triton"
    else:
        model = build_model(variant=name)
    model = model.to(device)
    x = torch.randn(batch, 3, 224, 224, device=device)
    y = torch.randint(0, 1000, (batch,), device=device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    ctx = (
        (lambda: torch.autocast(device.type, dtype=dtype))
        if dtype
        else (lambda: torch.autocast(device.type, enabled=False))
    )
    model.train(train)

    def step() -> None:
        if train:
            with ctx():
                loss = nn.functional.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        else:
            with torch.no_grad(), ctx():
                model(x)

    return step


MODELS = ("paper", "paper-direct", "owt", "torchvision")


def bench_model(
    batch: int | list[int] | None = None,
    precisions: list[str] | None = None,
    repeats: int = 3,
    device: str = "auto",
    layouts: tuple[str, ...] = ("NCHW", "channels_last"),
) -> dict[str, Any]:
    """paper and owt vs torchvision's alexnet(): training and inference images/s.

    For each precision and memory format the models are built side by side and timed in
    interleaved rounds (paper, paper-direct, owt, torchvision, paper, ...), so a slow spell
    on a shared machine hits all of them alike; each figure is the median over ``repeats``
    rounds. "of peak" divides by the dense matmul rate measured in the same precision.
    """
    from ..apps.summary import summary_dict
    from ..engine.distributed import resolve_device
    from ..hardware import cpu_bf16

    dev = resolve_device(device)
    cuda = dev.type == "cuda"
    if cuda:
        torch.backends.cudnn.benchmark = True
    batches = [batch] if isinstance(batch, int) else list(batch or [256 if cuda else 128])
    # On GPUs the paper's net has no Fourier path: paper-direct would time it twice; the
    # experimental Triton LRN is timed beside the default where Triton is installed.
    from ..network.lrn import triton_available

    models = tuple(m for m in MODELS if not (cuda and m == "paper-direct"))
    if cuda and triton_available():
        models = (*models[:1], "paper-triton", *models[1:])
    bad = [x for x in layouts if x not in ("NCHW", "channels_last")]
    if bad or not layouts:
        raise ValueError(f"layouts must be NCHW and/or channels_last, got {list(layouts)}")
    skipped = None
    if precisions is None:
        precisions = ["fp32", "bf16"] if (cuda or cpu_bf16()) else ["fp32"]
        if "bf16" not in precisions:
            skipped = "bf16 not measured by default: this CPU has no native bf16 (AMX/AVX512-BF16), where bf16 autocast ran ~10x slower than fp32; pass --precisions fp32,bf16 to measure it"
    from ..engine.execution import resolve_precision

    for p in precisions:  # an unknown or impossible precision fails before any work
        resolve_precision(p, dev, key="--precisions")
    macs = {v: summary_dict(build_model(variant=v))["macs"] for v in ("paper", "owt")}
    macs["torchvision"] = macs["owt"]
    macs["paper-direct"] = macs["paper-triton"] = macs["paper"]
    peak_dtypes = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
    peaks = {} if cuda else {p: matmul_peak_gflops(dtype=peak_dtypes[p]) for p in precisions}
    rows = []
    for precision, batch, cl in (
        (p, b, layout == "channels_last") for p in precisions for b in batches for layout in layouts
    ):
        steps = {
            (name, mode): _model_step(name, precision, cl, batch, dev, mode == "train")
            for name in models
            for mode in ("train", "inference")
        }
        for (name, _), fn in steps.items():
            if precision == "fp32" and name in ("paper", "owt"):
                fn()  # conv_impl auto decides (and may probe) here, not in the memory pass
        memory = {key: _step_peak_mb(fn, cuda) for key, fn in steps.items()}  # + warm-up
        times = interleaved(steps, repeats, warmup=0, sync=cuda)
        for name in models:
            row: dict[str, Any] = {
                "model": name,
                "precision": precision,
                "channels_last": cl,
                "batch": batch,
            }
            for mode in ("train", "inference"):
                row[f"{mode}_images_per_s"] = batch / statistics.median(times[name, mode])
                row[f"{mode}_rounds_s"] = times[name, mode]
            # forward = 2 * MACs FLOP; a training step ~ 3x the forward (forward + 2
            # backward GEMMs). Direct-convolution FLOPs: for layers that run in the
            # Fourier domain this is the work done per second had they run directly.
            row["train_gflops"] = row["train_images_per_s"] * 3 * 2 * macs[name] / 1e9
            if peaks.get(precision):
                row["train_fraction_of_matmul_peak"] = row["train_gflops"] / peaks[precision]
            row["train_step_peak_mb"] = memory[name, "train"]
            row["inference_step_peak_mb"] = memory[name, "inference"]
            rows.append(row)
        del steps

    def find(model: str, precision: str, batch: int) -> dict[str, Any]:
        cl = "channels_last" in layouts
        return next(
            r
            for r in rows
            if r["model"] == model
            and r["precision"] == precision
            and r["channels_last"] == cl
            and r["batch"] == batch
        )

    ratios = {
        (p if len(batches) == 1 else f"{p}, batch {b}"): find("paper", p, b)["train_images_per_s"]
        / find("torchvision", p, b)["train_images_per_s"]
        for p in precisions
        for b in batches
    }
    # The same ratio per round (paper and torchvision timed seconds apart), then the median:
    # steadier than the ratio of medians where the machine's speed drifts between rounds.
    paired = {
        key: statistics.median(
            t / p
            for p, t in zip(
                find("paper", prec, b)["train_rounds_s"],
                find("torchvision", prec, b)["train_rounds_s"],
                strict=True,
            )
        )
        for (key, prec, b) in (
            ((p if len(batches) == 1 else f"{p}, batch {b}"), p, b)
            for p in precisions
            for b in batches
        )
    }
    layout = "channels_last" if "channels_last" in layouts else "NCHW"
    batch_text = f"batch {batches[0]}" if len(batches) == 1 else f"batches {batches}"
    return {
        "benchmark": "model",
        "machine": machine_info(),
        "device": str(dev),
        "repeats": repeats,
        "matmul_peak_gflops": peaks,
        "matmul_peak_gflops_fp32": peaks.get("fp32"),
        "rows": rows,
        "ratios": ratios,
        "paired_ratios": paired,
        "ratio": min(ratios.values()),
        "ratio_settings": f"paper / torchvision training images/s, {layout}, {batch_text}; "
        "the lowest over " + ", ".join(precisions) + (" and batches" if len(batches) > 1 else ""),
        "note": skipped,
    }


def format_model(r: dict[str, Any]) -> str:
    m = r["machine"]
    lines = [
        f"Model throughput — {m['cpu']} ({m['cpu_capability']}), {m['threads']} threads, torch {m['torch']}, device {r['device']}",
        f"  median of {r['repeats']} interleaved rounds; {m['native']}; step MB = memory one training step adds",
        "  GFLOP/s counts direct-convolution work (3 x forward); paper-direct = paper with PyTorch's conv kernels only",
    ]
    for precision, peak in (r.get("matmul_peak_gflops") or {}).items():
        lines.append(f"  measured {precision} matmul peak: {peak:.0f} GFLOP/s")
    lines.append(
        f"  {'model':<13} {'prec':<5} {'batch':>5} {'layout':<13} {'train img/s':>11} {'infer img/s':>11} {'GFLOP/s':>8} {'of peak':>7} {'step MB':>8}"
    )
    for row in r["rows"]:
        frac = row.get("train_fraction_of_matmul_peak")
        lines.append(
            f"  {row['model']:<13} {row['precision']:<5} {row['batch']:>5} {'channels_last' if row['channels_last'] else 'NCHW':<13} "
            f"{row['train_images_per_s']:>11.1f} {row['inference_images_per_s']:>11.1f} {row['train_gflops']:>8.0f} "
            f"{(f'{100 * frac:.0f}%' if frac else '-'):>7} {row['train_step_peak_mb']:>8.0f}"
        )
    paired = r.get("paired_ratios") or {}
    for precision, ratio in (r.get("ratios") or {}).items():
        each = (
            f" (median of the rounds' own ratios {paired[precision]:.2f}x)"
            if precision in paired
            else ""
        )
        lines.append(f"  {precision}: paper / torchvision training {ratio:.2f}x{each}")
    lines.append(f"  ratio ({r['ratio_settings']}): {r['ratio']:.2f}x")
    if r["note"]:
        lines.append(f"  note: {r['note']}")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------
# End to end: prepared data -> augmentation -> training step, next to the model alone


def bench_e2e(
    source: str | None = None,
    variant: str = "paper",
    batch: int = 64,
    steps: int = 6,
    workers: int = 1,
) -> dict[str, Any]:
    """A real short training run from prepared 256 px data, in images/s, and the same
    model's training step on synthetic tensors already in memory; ratio = e2e / model-only."""
    import tempfile
    from pathlib import Path

    from ..config import load_train_config
    from ..data.dataset import LoaderSpec, Prepared, make_loader
    from ..data.prepare import prepare
    from ..engine.optim import build_optimizer

    if source is None:
        here = Path(__file__).resolve().parents[3]
        candidates = [p.parent / "shared/data/imagenet-samples" for p in (Path.cwd(), here)]
        source = str(next((c for c in candidates if c.is_dir()), candidates[0]))
    cfg = load_train_config("imagenet-paper", None, [f"model.variant={variant}"])
    with tempfile.TemporaryDirectory() as tmp:
        prepare(source, tmp, workers=2, progress=False)
        data = Prepared(tmp)
        torch.manual_seed(0)
        model = build_model(cfg.model).to(memory_format=torch.channels_last)
        opt = build_optimizer(model, cfg.optim)
        loader = make_loader(
            data, "train", LoaderSpec(train=True), batch, torch.device("cpu"),
            data.preprocessing(crop=224), workers=workers,
        )  # fmt: skip

        def epochs() -> Any:  # the loader's batches, epoch after epoch
            epoch = 0
            while True:
                loader.sampler.set_epoch(epoch)
                yield from loader
                epoch += 1

        x = torch.randn(batch, 3, 224, 224).contiguous(memory_format=torch.channels_last)
        y = torch.randint(0, 1000, (batch,))
        sources = {"e2e": epochs(), "model_only": iter(lambda: (x, y), None)}

        def train_steps(batches: Any, n: int) -> float:
            t0 = time.perf_counter()
            for _ in range(n):
                xb, yb = next(batches)
                opt.zero_grad(set_to_none=True)
                nn.functional.cross_entropy(model(xb), yb).backward()
                opt.step()
            return time.perf_counter() - t0

        for it in sources.values():  # warm-up: allocations, loader start
            train_steps(it, 1)
        # Alternate the two sides in rounds so that load from other processes on a shared
        # machine affects both alike.
        seconds = dict.fromkeys(sources, 0.0)
        rounds = max(1, steps // 2)
        for _ in range(rounds):
            for name, it in sources.items():
                seconds[name] += train_steps(it, steps // rounds)
        done = rounds * (steps // rounds) * batch
        e2e, model_only = done / seconds["e2e"], done / seconds["model_only"]
    return {
        "benchmark": "e2e",
        "machine": machine_info(),
        "variant": variant,
        "batch": batch,
        "steps": steps,
        "loader_workers": workers,
        "e2e_images_per_s": e2e,
        "model_only_images_per_s": model_only,
        "ratio": e2e / model_only,
    }


def _machine_line(m: dict[str, Any]) -> str:
    return f"{m['cpu']} ({m['cpu_capability']}), {m['threads']} threads, torch {m['torch']}"


def format_e2e(r: dict[str, Any]) -> str:
    return "\n".join(
        [
            f"End to end — {_machine_line(r['machine'])}; "
            f"{r['variant']}, batch {r['batch']}, {r['steps']} steps, {r['loader_workers']} loader worker(s)",
            f"  prepared JPEG -> augmentation -> training step   {r['e2e_images_per_s']:8.1f} images/s",
            f"  training step on in-memory tensors (model only)   {r['model_only_images_per_s']:8.1f} images/s",
            f"  ratio e2e / model-only                            {r['ratio']:8.2f}",
        ]
    )


# --------------------------------------------------------------------------------------
# Scale: one process vs two data-parallel processes on the same machine


def _scale_worker(
    rank: int, world: int, init: str, variant: str, batch: int, steps: int, threads: int, out: str
) -> None:
    """One rank of the data-parallel run: ``batch / world`` images per step, DDP over gloo
    (NCCL on GPUs); rank 0 writes the timings to ``out``."""

    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    torch.set_num_threads(threads)
    cuda = torch.cuda.is_available()
    device = torch.device(f"cuda:{rank}") if cuda else torch.device("cpu")
    if world > 1:
        dist.init_process_group(
            "nccl" if cuda else "gloo", init_method=init, rank=rank, world_size=world
        )
    torch.manual_seed(0)
    model = build_model(variant=variant).to(device).to(memory_format=torch.channels_last)
    net: nn.Module = DistributedDataParallel(model) if world > 1 else model
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    size = model.cfg.input_size
    x = torch.randn(batch // world, 3, size, size, device=device).contiguous(
        memory_format=torch.channels_last
    )
    y = torch.randint(0, model.cfg.num_classes, (batch // world,), device=device)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(net(x), y).backward()
        opt.step()

    t = time_it(step, repeats=steps, sync=cuda)
    comm = None
    if world > 1:  # the gradient all-reduce alone, as DDP does it (one flat sum)
        flat = torch.zeros(sum(p.numel() for p in model.parameters()), device=device)
        comm = time_it(lambda: dist.all_reduce(flat), repeats=3, sync=cuda)
        dist.destroy_process_group()
    if rank == 0:
        write_json(out, {"step_s": t, "allreduce_s": comm})


def bench_scale(
    variant: str = "paper", batch: int = 64, steps: int = 4, processes: int = 2
) -> dict[str, Any]:
    """Training images/s of one process using every core vs ``processes`` DDP processes
    sharing the cores (gloo on CPU), at the same global batch."""
    import json
    import tempfile

    import torch.multiprocessing as mp

    if batch % processes:
        raise ValueError(f"batch {batch} does not split over {processes} processes")
    threads = torch.get_num_threads()
    per = max(1, threads // processes)
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for world in (1, processes):
            out = f"{tmp}/rank0-{world}.json"
            init = f"file://{tmp}/rendezvous-{world}"
            args = (world, init, variant, batch, steps, threads if world == 1 else per, out)
            if world == 1:
                _scale_worker(0, *args)
            else:
                mp.spawn(_scale_worker, args=args, nprocs=world, join=True)
            with open(out) as f:
                results[world] = json.load(f)
    one, many = results[1], results[processes]
    params = sum(p.numel() for p in build_model(variant=variant).parameters())
    return {
        "benchmark": "scale",
        "machine": machine_info(),
        "variant": variant,
        "global_batch": batch,
        "steps": steps,
        "processes": processes,
        "threads_one_process": threads,
        "threads_per_process": per,
        "one_process_images_per_s": batch / one["step_s"],
        "ddp_images_per_s": batch / many["step_s"],
        "ratio": one["step_s"] / many["step_s"],
        "allreduce_s": many["allreduce_s"],
        "allreduce_mb": params * 4 / 2**20,
        "allreduce_share_of_step": many["allreduce_s"] / many["step_s"],
    }


def format_scale(r: dict[str, Any]) -> str:
    return "\n".join(
        [
            f"Scaling — {_machine_line(r['machine'])}; {r['variant']}, global batch "
            f"{r['global_batch']}, median of {r['steps']} steps",
            f"  1 process x {r['threads_one_process']} threads          {r['one_process_images_per_s']:8.1f} images/s",
            f"  {r['processes']} processes x {r['threads_per_process']} thread(s), DDP  {r['ddp_images_per_s']:8.1f} images/s",
            f"  ratio DDP / one process              {r['ratio']:8.2f}",
            f"  gradient all-reduce ({r['allreduce_mb']:.0f} MB) alone: {r['allreduce_s'] * 1e3:.0f} ms "
            f"= {100 * r['allreduce_share_of_step']:.0f}% of a DDP step",
        ]
    )


# --------------------------------------------------------------------------------------
# Conv: the paper's stride-1 layers, PyTorch's direct kernels vs the Fourier-domain path


def bench_conv(
    batch: int = 128, repeats: int = 5, variant: str = "paper", input_size: int | None = None
) -> dict[str, Any]:
    """Forward + backward of conv2-conv5 of a network (the paper's by default; fp32,
    channels_last), with PyTorch's kernel and with :mod:`alexnet.network.fourier`, timed in
    interleaved rounds, next to the speedup the cost model predicts and what ``auto``
    chooses on this machine: its own probe's answer (batch min(batch, 32), read from the
    probe cache where an earlier run measured it), so predicted, measured and chosen can be
    compared."""
    from ..network.fourier import Conv2d, estimated_speedup

    model = build_model(variant=variant, input_size=input_size)
    sides = model.geo.sizes
    layers = []
    for name in ("conv2", "conv3", "conv4", "conv5"):
        conv = getattr(model, name)
        side = sides["pool1"] if name == "conv2" else sides["pool2"]
        x = torch.randn(batch, conv.in_channels, side, side).contiguous(
            memory_format=torch.channels_last
        )
        x.requires_grad_()
        g = torch.randn(batch, conv.out_channels, side, side).contiguous(
            memory_format=torch.channels_last
        )
        fns = {}
        for impl in ("direct", "fourier"):
            c = Conv2d(
                conv.in_channels,
                conv.out_channels,
                conv.kernel_size,
                padding=conv.padding,
                groups=conv.groups,
                impl=impl,
            ).to(memory_format=torch.channels_last)
            c.load_state_dict(conv.state_dict())

            def step(c: nn.Module = c, x: torch.Tensor = x, g: torch.Tensor = g) -> None:
                x.grad = None
                c.zero_grad(set_to_none=True)
                c(x).backward(g)

            fns[impl] = step
        t = medians(interleaved(fns, repeats))
        k = conv.kernel_size[0]
        auto_fourier = conv.uses_fourier(x)  # probes (or reads the cache) like training does
        decision = conv.decision or {}
        layers.append(
            {
                "layer": name,
                "shape": [batch, conv.in_channels, side, side],
                "out_channels": conv.out_channels,
                "kernel": k,
                "groups": conv.groups,
                "direct_ms": t["direct"] * 1e3,
                "fourier_ms": t["fourier"] * 1e3,
                "speedup": t["direct"] / t["fourier"],
                "predicted_speedup": estimated_speedup(
                    conv.in_channels, conv.out_channels, k, side, side, conv.groups
                ),
                "auto_uses_fourier": auto_fourier,
                "auto": decision.get("impl"),
                "auto_reason": decision.get("reason"),
                "auto_measured": decision.get("measured"),
                "auto_probe_batch": decision.get("probe_batch"),
            }
        )
    total_direct = sum(r["direct_ms"] for r in layers)
    total_fourier = sum(r["fourier_ms"] for r in layers)
    return {
        "benchmark": "conv",
        "machine": machine_info(),
        "variant": variant,
        "input_size": model.cfg.input_size,
        "batch": batch,
        "repeats": repeats,
        "layers": layers,
        "ratio": total_direct / total_fourier,
        "ratio_settings": "conv2-conv5 forward+backward, PyTorch's kernels / Fourier domain",
    }


def format_conv(r: dict[str, Any]) -> str:
    lines = [
        f"Convolutions of {r['variant']} at {r['input_size']} px, forward+backward, fp32 "
        f"channels_last, batch {r['batch']}, median of {r['repeats']} interleaved rounds — "
        f"{_machine_line(r['machine'])}",
        "  speedup: measured here (direct / Fourier); predicted: the cost model; auto: what "
        "Conv2d(impl='auto') chooses on this machine, and why",
        f"  {'layer':<6} {'input':<18} {'out':>4} {'k':>2} {'g':>2} {'direct ms':>10} "
        f"{'Fourier ms':>10} {'speedup':>8} {'predicted':>9}  auto",
    ]
    for row in r["layers"]:
        shape = "x".join(str(v) for v in row["shape"])
        auto = row.get("auto") or ("fourier" if row["auto_uses_fourier"] else "direct")
        why = f" ({row['auto_reason']})" if row.get("auto_reason") else ""
        lines.append(
            f"  {row['layer']:<6} {shape:<18} {row['out_channels']:>4} {row['kernel']:>2} "
            f"{row['groups']:>2} {row['direct_ms']:>10.1f} {row['fourier_ms']:>10.1f} "
            f"{row['speedup']:>7.2f}x {row['predicted_speedup']:>8.2f}x  {auto}{why}"
        )
    lines.append(f"  ratio ({r['ratio_settings']}): {r['ratio']:.2f}x")
    return "\n".join(lines)
