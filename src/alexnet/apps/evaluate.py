"""``alexnet evaluate``: one model or an ensemble on a prepared split, with per-class
accuracy and the most confused class pairs (metrics in :mod:`alexnet.engine.metrics`)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ..atomic import text_output
from ..data.transforms import views_label
from ..engine.metrics import has_top5, model_outputs, topk_correct
from ..progress import bar as progress_bar


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
    allow_mismatch: bool = False,
) -> dict[str, Any]:
    """Top-1/top-5 error of one model or the average of several models' softmax outputs
    (the paper's "5 CNNs"), per-class accuracy and the most confused class pairs.
    ``precision``: fp32, or bf16/fp16 autocast where the device runs it.
    ``allow_mismatch``: evaluate on data the model was not prepared for (deliberate
    transfer; :meth:`Preprocessing.for_data` says what is adapted, and the report lists it)."""
    import time

    from ..data.dataset import Prepared, make_loader
    from ..data.sources import DataError
    from ..engine import distributed as D
    from ..engine.execution import resolve_precision
    from ..engine.inference import load_model

    dist = D.setup(device)
    try:
        resolved = resolve_precision(precision, dist.device, key="--precision")
        autocast = resolved.autocast_dtype
        data = Prepared(data_dir)
        loaded = [load_model(w, dist.device) for w in weights]
        first = loaded[0]
        for lm in loaded[1:]:
            differ = [
                f"{what}: {mine} vs {theirs}"
                for what, mine, theirs in (
                    ("input size", first.crop, lm.crop),
                    ("stored image size", first.image_size, lm.image_size),
                    ("classes", len(first.classes), len(lm.classes)),
                )
                if mine != theirs
            ]
            if not differ and first.classes != lm.classes:
                differ = ["the class names differ"]
            if differ:
                raise ValueError(
                    f"{first.path} and {lm.path} cannot be ensembled: {'; '.join(differ)}"
                )
        # Each model sees its own mean image, scale and normalisation (§6's "5 CNNs" were
        # trained separately); the stored size and crop are shared, checked above. What
        # --allow-mismatch adapted goes into the report, once per distinct note.
        preps, notes = [], []
        for lm in loaded:
            p, adapted = lm.prep.for_data(
                data.image_size, data.classes, f"{data_dir} ({split})", allow_mismatch
            )
            preps.append(p)
            notes += [n for n in adapted if n not in notes]
        prep, others = preps[0], preps[1:]
        loader = make_loader(
            data, split, first.loader_spec(views), max(1, batch_size // dist.world_size), dist.device,
            prep, rank=dist.rank, world_size=dist.world_size, workers=workers, ensemble=others,
        )  # fmt: skip
        if loader.num_samples == 0:
            raise DataError(f"{data_dir} has no images in its {split} split: nothing to evaluate")
        n_classes = first.model.cfg.num_classes
        if n_classes != data.num_classes:
            raise ValueError(
                f"{first.path} predicts {n_classes} classes but {data_dir} has {data.num_classes}"
            )
        confusion = torch.zeros(n_classes, n_classes, dtype=torch.int64, device=dist.device)
        top5_hits = torch.zeros(n_classes, dtype=torch.int64, device=dist.device)
        nll = torch.zeros(1, dtype=torch.float64, device=dist.device)
        bar = None
        if progress and dist.is_main:
            bar = progress_bar(loader.num_samples, f"evaluate {split}")
        t0 = time.perf_counter()
        models = [lm.model for lm in loaded]
        for probs, batch in model_outputs(models, loader.batches(), dist.device, autocast):
            y = batch["labels"]
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
        label = views_label(views, data.image_size[:2], prep.crop)
        return {**report, "views_label": label, "precision": resolved.name, "mismatch_notes": notes}
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
    classes = len(r["per_class"])
    if has_top5(classes):
        errors = (
            f"  top-1 error {100 * r['top1_error']:.2f}%   top-5 error {100 * r['top5_error']:.2f}%"
            f"   (accuracy {100 * r['top1_accuracy']:.2f}% / {100 * r['top5_accuracy']:.2f}%)"
        )
    else:
        errors = (
            f"  top-1 error {100 * r['top1_error']:.2f}%   (accuracy "
            f"{100 * r['top1_accuracy']:.2f}%; no top-5 with {classes} classes)"
        )
    lines = [
        f"{kind} on {r['data']} [{r['split']}], {r.get('views_label', r['views'] + ' views')}, {r['images']:,} images, "
        f"{r.get('precision', 'fp32')}",
        errors,
        f"  {r['images_per_s'] or 0:,.0f} images/s",
    ]
    lines += [f"  --allow-mismatch: {note}" for note in r.get("mismatch_notes") or []]
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

    with text_output(path, newline="") as f:
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
