"""Top-1 / top-5 error as the paper reports it (§2, Results), centre or 10-crop views.

10-crop: the softmax outputs of the ten views are averaged (§4.1). Under torchrun every
rank evaluates a disjoint share of the images and the counts are summed, so every image is
counted exactly once and the reported count equals the dataset size.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch
from torch import Tensor, nn

from .distributed import all_reduce_sum


def autocast_context(
    device: torch.device, dtype: torch.dtype | None
) -> contextlib.AbstractContextManager:
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def view_probabilities(models: list[nn.Module], x: Tensor) -> Tensor:
    """Softmax probabilities averaged over views (x: (V, N, C, H, W)) and models."""
    views = x if x.dim() == 5 else x.unsqueeze(0)
    v, n = views.shape[:2]
    flat = views.flatten(0, 1)
    if flat.dim() == 4 and flat.shape[1] in (1, 3):
        flat = flat.contiguous(memory_format=torch.channels_last)
    total = None
    for model in models:
        probs = model(flat).float().softmax(-1).view(v, n, -1).mean(0)
        total = probs if total is None else total + probs
    assert total is not None
    return total / len(models)


def topk_correct(probs: Tensor, labels: Tensor, k: int = 5) -> tuple[Tensor, Tensor]:
    """(top-1 correct, top-k correct) boolean vectors."""
    k = min(k, probs.shape[1])
    top = probs.topk(k, dim=1).indices
    hit = top == labels.view(-1, 1)
    return hit[:, 0], hit.any(dim=1)


@torch.no_grad()
def evaluate_model(
    models: nn.Module | list[nn.Module],
    loader: Any,
    device: torch.device,
    autocast_dtype: torch.dtype | None = None,
    progress: Any = None,
) -> dict[str, float]:
    """Loss, top-1 and top-5 error over ``loader`` (summed over ranks)."""
    models = models if isinstance(models, list) else [models]
    was_training = [m.training for m in models]
    for m in models:
        m.eval()
    sums = torch.zeros(4, dtype=torch.float64, device=device)  # nll, top1, top5, n
    try:
        for batch in loader.batches():
            x, y = batch["inputs"], batch["labels"]
            with autocast_context(device, autocast_dtype):
                probs = view_probabilities(models, x)
            c1, c5 = topk_correct(probs, y)
            nll = -torch.log(probs.gather(1, y.view(-1, 1)).clamp_min(1e-12)).sum()
            sums += torch.stack(
                [
                    nll.double(),
                    c1.sum().double(),
                    c5.sum().double(),
                    torch.tensor(float(len(y)), device=device, dtype=torch.float64),
                ]
            )
            if progress is not None:
                progress(len(y))
    finally:
        for m, t in zip(models, was_training, strict=True):
            m.train(t)
    all_reduce_sum(sums)
    nll, c1, c5, n = sums.tolist()
    n = max(n, 1.0)
    return {
        "loss": nll / n,
        "top1_error": 1.0 - c1 / n,
        "top5_error": 1.0 - c5 / n,
        "images": int(sums[3].item()),
    }


# --------------------------------------------------------------------------------------
# `alexnet evaluate`: checkpoints (one or an ensemble) on a prepared split


def run_evaluation(
    weights: list[str],
    data_dir: str,
    split: str = "val",
    views: str = "center",
    batch_size: int = 128,
    workers: int | str = "auto",
    device: str = "auto",
    progress: bool = True,
    top_confusions: int = 10,
    precision: str = "fp32",
) -> dict[str, Any]:
    """Top-1/top-5 error of one model or the average of several models' softmax outputs
    (the paper's "5 CNNs"), per-class accuracy and the most confused class pairs.
    ``precision``: fp32, or bf16/fp16 autocast where the device runs it."""
    import time

    from . import distributed as D
    from .data import Prepared, make_loader
    from .execution import resolve_precision
    from .inference import load_model

    dist = D.setup(device)
    try:
        resolved = resolve_precision(precision, dist.device, key="--precision")
        autocast = resolved.autocast_dtype
        data = Prepared(data_dir)
        loaded = [load_model(w, dist.device) for w in weights]
        first = loaded[0]
        for lm in loaded[1:]:
            if (
                lm.crop != first.crop
                or lm.normalize != first.normalize
                or lm.model.cfg.num_classes != first.model.cfg.num_classes
            ):
                raise ValueError(
                    f"{lm.path} and {first.path} differ in input size, normalisation or classes; they cannot be ensembled"
                )
        n_classes = first.model.cfg.num_classes
        if n_classes != data.num_classes:
            raise ValueError(
                f"{first.path} predicts {n_classes} classes but {data_dir} has {data.num_classes}"
            )
        loader = make_loader(
            data, split, first.loader_spec(views), max(1, batch_size // dist.world_size), dist.device,
            rank=dist.rank, world_size=dist.world_size, workers=workers, mean=first.mean,
        )  # fmt: skip
        confusion = torch.zeros(n_classes, n_classes, dtype=torch.int64, device=dist.device)
        top5_hits = torch.zeros(n_classes, dtype=torch.int64, device=dist.device)
        nll = torch.zeros(1, dtype=torch.float64, device=dist.device)
        bar = None
        if progress and dist.is_main:
            from tqdm import tqdm

            bar = tqdm(
                total=loader.num_samples,
                desc=f"evaluate {split}",
                unit="img",
                dynamic_ncols=True,
                mininterval=1.0,
            )
        t0 = time.perf_counter()
        models = [lm.model for lm in loaded]
        with torch.no_grad():
            for batch in loader.batches():
                x, y = batch["inputs"], batch["labels"]
                with autocast_context(dist.device, autocast):
                    probs = view_probabilities(models, x)
                pred = probs.argmax(1)
                confusion.index_put_((y, pred), torch.ones_like(y), accumulate=True)
                _, c5 = topk_correct(probs, y)
                top5_hits.index_add_(0, y, c5.long())
                nll += -torch.log(probs.gather(1, y.view(-1, 1)).clamp_min(1e-12)).sum().double()
                if bar is not None:
                    bar.update(len(y) * dist.world_size)
        if bar is not None:
            bar.close()
        seconds = time.perf_counter() - t0
        for t in (confusion, top5_hits, nll):
            D.all_reduce_sum(t)
        report = _report(
            confusion.cpu(),
            top5_hits.cpu(),
            float(nll.item()),
            data,
            weights,
            data_dir,
            split,
            views,
            seconds,
            dist.world_size,
            top_confusions,
        )
        return {**report, "precision": resolved.name}
    finally:
        D.cleanup()


def _report(
    confusion: Tensor, top5_hits: Tensor, nll: float, data: Any, weights: list[str], data_dir: str,
    split: str, views: str, seconds: float, world: int, top_confusions: int,
) -> dict[str, Any]:  # fmt: skip
    per_class_n = confusion.sum(1)
    n = int(per_class_n.sum())
    correct = confusion.diag()
    top1 = int(correct.sum())
    top5 = int(top5_hits.sum())
    off = confusion.clone()
    off.fill_diagonal_(0)
    pairs = []
    if off.sum() > 0:
        values, flat = off.flatten().topk(min(top_confusions, off.numel()))
        for v, f in zip(values.tolist(), flat.tolist(), strict=True):
            if v == 0:
                break
            t, p = divmod(f, confusion.shape[1])
            pairs.append(
                {
                    "true": data.names[t],
                    "predicted": data.names[p],
                    "count": v,
                    "true_index": t,
                    "predicted_index": p,
                }
            )
    per_class = [
        {
            "index": i,
            "class": data.classes[i],
            "name": data.names[i],
            "images": int(per_class_n[i]),
            "top1_accuracy": (int(correct[i]) / int(per_class_n[i])) if per_class_n[i] else None,
            "top5_accuracy": (int(top5_hits[i]) / int(per_class_n[i])) if per_class_n[i] else None,
        }
        for i in range(len(data.classes))
    ]
    return {
        "top1_error": 1 - top1 / max(n, 1),
        "top5_error": 1 - top5 / max(n, 1),
        "top1_accuracy": top1 / max(n, 1),
        "top5_accuracy": top5 / max(n, 1),
        "loss": nll / max(n, 1),
        "images": n,
        "dataset_images": len(data.split(split)),
        "models": weights,
        "ensemble": len(weights) > 1,
        "views": views,
        "data": str(data_dir),
        "split": split,
        "world_size": world,
        "seconds": seconds,
        "images_per_s": n / seconds if seconds > 0 else None,
        "per_class": per_class,
        "confused_pairs": pairs,
    }


def format_report(r: dict[str, Any]) -> str:
    kind = f"ensemble of {len(r['models'])} models" if r["ensemble"] else r["models"][0]
    lines = [
        f"{kind} on {r['data']} [{r['split']}], {r['views']} views, {r['images']:,} images, "
        f"{r.get('precision', 'fp32')}",
        f"  top-1 error {100 * r['top1_error']:.2f}%   top-5 error {100 * r['top5_error']:.2f}%"
        f"   (accuracy {100 * r['top1_accuracy']:.2f}% / {100 * r['top5_accuracy']:.2f}%)",
        f"  {r['images_per_s'] or 0:,.0f} images/s",
    ]
    scored = [c for c in r["per_class"] if c["images"]]
    if 1 < len(scored) <= 20:
        lines.append("  per class top-1 accuracy:")
        lines += [
            f"    {c['name']:<24} {100 * c['top1_accuracy']:6.2f}%  ({c['images']} images)"
            for c in scored
        ]
    if r["confused_pairs"]:
        lines.append("  most confused (true -> predicted: count):")
        lines += [
            f"    {p['true']} -> {p['predicted']}: {p['count']}" for p in r["confused_pairs"][:5]
        ]
    return "\n".join(lines)


def write_csv(r: dict[str, Any], path: str) -> None:
    import csv

    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["index", "class", "name", "images", "top1_accuracy", "top5_accuracy"])
        for c in r["per_class"]:
            w.writerow(
                [
                    c["index"],
                    c["class"],
                    c["name"],
                    c["images"],
                    c["top1_accuracy"],
                    c["top5_accuracy"],
                ]
            )
        w.writerow([])
        w.writerow(["total", "", "", r["images"], r["top1_accuracy"], r["top5_accuracy"]])
