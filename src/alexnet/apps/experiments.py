"""The paper's testable claims as commands (``alexnet experiment ...``).

relu-vs-tanh  Figure 1: a four-layer CNN like the authors' small CIFAR-10 nets, trained with
              ReLU and with tanh, each at its own best learning rate from a small sweep, no
              regularisation; epochs to reach 25% training error, and their ratio.
ablation      the baseline and each ablated variant with the same budget and seeds; a table
              of top-1/top-5 error (mean +- std over seeds), the difference to the baseline
              and the paper's stated effect.

Both write raw numbers (JSON, CSV) and figures into an output directory, and skip the runs
already finished there, so an interrupted experiment resumes where it stopped.
"""

from __future__ import annotations

import csv
import json
import statistics
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..atomic import atomic_path, write_json

# --------------------------------------------------------------------------------------
# Figure 1


def four_layer_cnn(in_channels: int, num_classes: int, size: int, activation: str) -> nn.Sequential:
    """cuda-convnet's "80sec" CIFAR-10 net: conv 5x5 32 -> pool 3/2 -> conv 5x5 32 ->
    pool 3/2 -> conv 5x5 64 -> pool 3/2 -> fully connected; no normalisation, no dropout."""
    act = nn.ReLU if activation == "relu" else nn.Tanh
    side = size
    for _ in range(3):
        side = -(-(side - 3) // 2) + 1  # ceil-mode 3/2 pooling, as cuda-convnet
    return nn.Sequential(
        nn.Conv2d(in_channels, 32, 5, padding=2), act(), nn.MaxPool2d(3, 2, ceil_mode=True),
        nn.Conv2d(32, 32, 5, padding=2), act(), nn.MaxPool2d(3, 2, ceil_mode=True),
        nn.Conv2d(32, 64, 5, padding=2), act(), nn.MaxPool2d(3, 2, ceil_mode=True),
        nn.Flatten(), nn.Linear(64 * side * side, num_classes),
    )  # fmt: skip


def epochs_to_threshold(curve: list[tuple[float, float]], threshold: float) -> float | None:
    """First epoch at which the training error reaches ``threshold``, interpolating
    linearly between measured points; None if it never does."""
    prev: tuple[float, float] | None = None
    for epoch, err in curve:
        if err <= threshold:
            if prev is None or prev[1] == err:
                return epoch
            e0, r0 = prev
            return e0 + (epoch - e0) * (r0 - threshold) / (r0 - err)
        prev = (epoch, err)
    return None


def _resolve_data(data: str) -> str:
    """``cifar10`` / ``fashion-mnist`` -> a prepared directory under data/ (prepared once)."""
    from ..data.prepare import prepare

    if data in ("cifar10", "fashion-mnist"):
        target = Path("data") / data
        if not (target / "meta.json").is_file():
            prepare(data, target, progress=False)
        return str(target)
    return data


def _train_curve(
    data_dir: str,
    activation: str,
    lr: float,
    epochs: int,
    seed: int,
    points: int,
    batch: int,
    limit: int,
    stop_below: float | None = None,
) -> dict[str, Any]:
    """Plain SGD (momentum 0.9, no weight decay, no augmentation); the running training
    error is recorded ``points`` times per epoch. ``stop_below``: end the run once a point
    reaches it (Figure 1 needs the epochs to get there, not the rest of the curve)."""
    from ..data.dataset import LoaderSpec, Prepared, make_loader

    data = Prepared(data_dir)
    h, _, c = data.image_size
    torch.manual_seed(seed)
    model = four_layer_cnn(c, data.num_classes, h, activation).to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    spec = LoaderSpec(train=True, flip=False, pca_std=0.0)
    prep = data.preprocessing(crop=h, input_scale=1 / 64)
    loader = make_loader(
        data, "train", spec, batch, torch.device("cpu"), prep, seed=seed, workers=0
    )
    if limit:
        loader.sampler.limit(limit)
    steps = len(loader)
    every = max(1, steps // points)
    curve: list[tuple[float, float]] = []
    t0 = time.perf_counter()
    wrong = seen = 0
    diverged = reached = False
    for epoch in range(epochs):
        loader.sampler.set_epoch(epoch)
        for i, (x, y) in enumerate(loader):
            logits = model(x)
            loss = nn.functional.cross_entropy(logits, y)
            if not torch.isfinite(loss):
                diverged = True
                break
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            wrong += int((logits.argmax(1) != y).sum())
            seen += len(y)
            if (i + 1) % every == 0 or i + 1 == steps:
                curve.append((epoch + (i + 1) / steps, wrong / seen))
                wrong = seen = 0
                if stop_below is not None and curve[-1][1] <= stop_below:
                    reached = True
                    break
        if diverged or reached:
            break
    return {"activation": activation, "lr": lr, "seed": seed, "curve": curve, "seconds": time.perf_counter() - t0,
            "diverged": diverged, "seconds_per_epoch": (time.perf_counter() - t0) / max(1, len(curve) / points)}  # fmt: skip


def relu_vs_tanh(
    data: str, out: str, epochs: int = 10, lrs: tuple[float, ...] = (0.001, 0.003, 0.01, 0.03),
    seeds: tuple[int, ...] = (0,), threshold: float = 0.25, points: int = 10, batch: int = 128,
    limit: int = 0, progress: bool = True,
) -> dict[str, Any]:  # fmt: skip
    """Figure 1. Every (activation, lr, seed) run is stored in ``out/runs.json`` as it
    finishes and skipped on a rerun."""
    data_dir = _resolve_data(data)
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    store = out_dir / "runs.json"
    runs: list[dict[str, Any]] = json.loads(store.read_text()) if store.is_file() else []
    done = {(r["activation"], r["lr"], r["seed"]) for r in runs}
    for act in ("relu", "tanh"):
        for lr in lrs:
            for seed in seeds:
                if (act, lr, seed) in done:
                    continue
                if progress:
                    print(f"relu-vs-tanh: {act}, lr {lr}, seed {seed} ...", flush=True)
                runs.append(
                    _train_curve(data_dir, act, lr, epochs, seed, points, batch, limit, threshold)
                )
                write_json(store, runs, indent=None)
    result = summarise_relu_tanh(runs, threshold, lrs, seeds)
    result.update(
        {
            "data": data_dir,
            "epochs": epochs,
            "threshold": threshold,
            "lrs": list(lrs),
            "seeds": list(seeds),
        }
    )
    write_json(out_dir / "relu_vs_tanh.json", result)
    with atomic_path(out_dir / "curves.csv") as tmp, open(tmp, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["activation", "lr", "seed", "epoch", "train_error"])
        for r in runs:
            for e, err in r["curve"]:
                w.writerow([r["activation"], r["lr"], r["seed"], f"{e:.4f}", f"{err:.5f}"])
    result["figure"] = _plot_relu_tanh(runs, result, out_dir / "figure1")
    return result


def summarise_relu_tanh(
    runs: list[dict[str, Any]], threshold: float, lrs: tuple[float, ...], seeds: tuple[int, ...]
) -> dict[str, Any]:
    """Per activation: the lr reaching the threshold in the fewest epochs (mean over seeds)."""
    best: dict[str, Any] = {}
    for act in ("relu", "tanh"):
        options = []
        for lr in lrs:
            rs = [
                r for r in runs if r["activation"] == act and r["lr"] == lr and r["seed"] in seeds
            ]
            hits = [epochs_to_threshold([tuple(p) for p in r["curve"]], threshold) for r in rs]
            if rs and all(h is not None for h in hits):
                spe = statistics.mean(r["seconds_per_epoch"] for r in rs)
                options.append(
                    {
                        "lr": lr,
                        "epochs": statistics.mean(hits),
                        "epochs_per_seed": hits,
                        "seconds": statistics.mean(hits) * spe,
                    }
                )  # type: ignore[arg-type]
        best[act] = min(options, key=lambda o: o["epochs"]) if options else None
    ratio = None
    per_seed: list[float] = []
    if best["relu"] and best["tanh"]:
        ratio = best["tanh"]["epochs"] / best["relu"]["epochs"]
        # Seed by seed, each side at its best lr: the spread of the ratio.
        per_seed = [
            t / r
            for t, r in zip(
                best["tanh"]["epochs_per_seed"], best["relu"]["epochs_per_seed"], strict=True
            )
        ]
    spread = statistics.stdev(per_seed) if len(per_seed) > 1 else None
    return {
        "best": best,
        "speedup_epochs": ratio,
        "speedup_per_seed": per_seed,
        "speedup_std": spread,
        "paper_speedup": 6.0,
    }


def _plot_relu_tanh(runs: list[dict[str, Any]], result: dict[str, Any], out: Path) -> list[str]:
    from .visualize import _plt, _save

    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for act, style in (("relu", "-"), ("tanh", "--")):
        b = result["best"][act]
        lr = b["lr"] if b else None
        for r in runs:
            if (
                r["activation"] == act
                and (lr is None or r["lr"] == lr)
                and r["seed"] == runs[0]["seed"]
            ):
                e, err = zip(*r["curve"], strict=True) if r["curve"] else ((), ())
                ax.plot(e, [100 * v for v in err], style, label=f"{act} (lr {r['lr']:g})")
                if lr is None:
                    break
    ax.axhline(
        100 * result["threshold"],
        color="grey",
        linestyle=":",
        label=f"{100 * result['threshold']:.0f}% training error",
    )
    ax.set_xlabel("epochs")
    ax.set_ylabel("training error (%)")
    sp = result["speedup_epochs"]
    ax.set_title(
        f"ReLU vs tanh: {sp:.1f}x fewer epochs to 25%"
        if sp
        else "ReLU vs tanh (threshold not reached by both)"
    )
    ax.grid(alpha=0.3)
    ax.legend()
    return _save(fig, out)


# --------------------------------------------------------------------------------------
# Ablations

# name -> (config overrides, the paper's stated effect of removing it, in top-1 / top-5 points)
ABLATIONS: dict[str, tuple[list[str], str]] = {
    "lrn": (["model.norm=none"], "+1.4 / +1.2 (§3.3)"),
    "overlap-pool": (["model.pooling=non-overlapping"], "+0.4 / +0.3 (§3.4)"),
    "dropout": (["model.dropout=0.0"], "heavy overfitting (§4.2)"),
    "pca": (["data.pca_std=0.0"], "over +1 top-1 (§4.1)"),
    "flip": (["data.flip=false"], "— (§4.1)"),
    "towers": (
        ["model.towers=1", "model.width=0.5"],
        "+1.7 / +1.2 one tower, half the kernels (§3.2)",
    ),
    "relu": (["model.activation=tanh"], "~6x slower to train (Figure 1)"),
    "conv3": (["model.drop_conv=[conv3]"], "about +2 top-1 (§7)"),
    "conv4": (["model.drop_conv=[conv4]"], "about +2 top-1 (§7)"),
    "conv5": (["model.drop_conv=[conv5]"], "about +2 top-1 (§7)"),
    "conv6": (["model.extra_conv6=true"], "adds a layer: 1 CNN* (§6)"),
}


def ablation(
    data: str, out: str, ablate: list[str], preset: str | None = None, seeds: int = 1, epochs: int | None = None,
    overrides: list[str] | None = None, progress: bool = True,
) -> dict[str, Any]:  # fmt: skip
    from ..config import load_train_config
    from ..engine.train import train

    unknown = [a for a in ablate if a not in ABLATIONS]
    if unknown:
        raise ValueError(f"unknown ablation {unknown[0]!r}; choose from {sorted(ABLATIONS)}")
    data_dir = _resolve_data(data)
    if preset is None:
        preset = data if data in ("cifar10", "fashion-mnist") else "imagenet-paper"
    base = [f"data.path={data_dir}", *(overrides or [])]
    if epochs:
        base.append(f"run.epochs={epochs}")
    out_dir = Path(out)
    results: dict[str, list[dict[str, Any]]] = {}
    for variant in ["baseline", *ablate]:
        extra = [] if variant == "baseline" else ABLATIONS[variant][0]
        results[variant] = []
        for seed in range(seeds):
            run_dir = out_dir / variant / f"seed{seed}"
            summary_file = run_dir / "summary.json"
            if not summary_file.is_file():
                if progress:
                    print(f"ablation: {variant}, seed {seed} -> {run_dir}", flush=True)
                cfg = load_train_config(preset, None, [*base, *extra, f"run.seed={seed}"])
                # Resume a run cut short; one killed before its first checkpoint starts over.
                ckpt = (run_dir / "checkpoint.pt").is_file()
                train(cfg, run_dir, resume=ckpt, force=not ckpt, quiet=True)
            s = json.loads(summary_file.read_text())
            results[variant].append(
                {"seed": seed, "top1": s["best_val_top1_error"], "top5": s["best_val_top5_error"]}
            )
    table = ablation_table(results)
    report = {"data": data_dir, "preset": preset, "seeds": seeds, "epochs": epochs, "rows": table}
    write_json(out_dir / "ablation.json", report)
    with atomic_path(out_dir / "ablation.csv") as tmp, open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(table[0]))
        w.writeheader()
        w.writerows(table)
    return report


def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.mean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def _label(variant: str) -> str:
    return {"baseline": "baseline", "conv6": "with conv6", "relu": "tanh instead of relu"}.get(
        variant, f"without {variant}"
    )


def ablation_table(results: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Rows of mean +- std (percent) per variant, and the difference to the baseline."""
    b1, _ = _mean_std([100 * r["top1"] for r in results["baseline"]])
    b5, _ = _mean_std([100 * r["top5"] for r in results["baseline"]])
    rows = []
    for variant, rs in results.items():
        m1, s1 = _mean_std([100 * r["top1"] for r in rs])
        m5, s5 = _mean_std([100 * r["top5"] for r in rs])
        rows.append(
            {
                "variant": variant
                if variant == "baseline"
                else f"without {variant}"
                if variant not in ("conv6", "relu")
                else ("with conv6" if variant == "conv6" else "tanh instead of relu"),
                "top1_error": m1,
                "top1_std": s1,
                "top5_error": m5,
                "top5_std": s5,
                "delta_top1": m1 - b1,
                "delta_top5": m5 - b5,
                "n": len(rs),
                "paper": "" if variant == "baseline" else ABLATIONS[variant][1],
            }
        )
    return rows


def format_ablation(report: dict[str, Any]) -> str:
    lines = [
        f"{'variant':<24} {'top-1 error %':>16} {'top-5 error %':>16} {'Δ top-1':>8} {'Δ top-5':>8}  paper (removing it)"
    ]
    for r in report["rows"]:
        lines.append(
            f"{r['variant']:<24} {r['top1_error']:>8.2f} ± {r['top1_std']:<5.2f} {r['top5_error']:>8.2f} ± {r['top5_std']:<5.2f} "
            f"{r['delta_top1']:>+8.2f} {r['delta_top5']:>+8.2f}  {r['paper']}"
        )
    lines.append(
        f"n = {report['seeds']} seed(s) per row, preset {report['preset']}, data {report['data']}"
    )
    return "\n".join(lines)


def format_relu_tanh(r: dict[str, Any]) -> str:
    def line(act: str) -> str:
        b = r["best"][act]
        if not b:
            return f"  {act}: never reached {100 * r['threshold']:.0f}% training error in {r['epochs']} epochs"
        return f"  {act}: lr {b['lr']:g}, {b['epochs']:.2f} epochs ({b['seconds']:.0f} s) to {100 * r['threshold']:.0f}% training error"

    sp = r["speedup_epochs"]
    spread = f" ± {r['speedup_std']:.2f} over seeds" if r.get("speedup_std") is not None else ""
    tail = (
        f"  ReLU reaches it {sp:.2f}x{spread} faster in epochs (paper: 6x on CIFAR-10)"
        if sp
        else "  no ratio: a side never reached the threshold"
    )
    return "\n".join(
        [
            f"Figure 1 on {r['data']} (seeds {r['seeds']}, lrs {r['lrs']})",
            line("relu"),
            line("tanh"),
            tail,
        ]
    )
