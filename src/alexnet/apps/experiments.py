"""The paper's testable claims as commands (``alexnet experiment ...``).

relu-vs-tanh  Figure 1: a four-layer CNN like cuda-convnet's small CIFAR-10 nets, trained with
              ReLU and with tanh, each at its own best learning rate from a small sweep, no
              regularisation; epochs to reach 25% training error, and their ratio.
ablation      the baseline and each ablated variant with the same budget and seeds; a table
              of the last epoch's top-1/top-5 validation error (mean +- std over seeds), the
              difference to the baseline and the paper's stated effect.

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

from ..atomic import atomic_path, write_json, write_text

# --------------------------------------------------------------------------------------
# Figure 1


# Figure 1's two starting points. "pytorch": PyTorch's default init, inputs (pixel - mean) / 64.
# "cuda-convnet": the init of cuda-convnet's example configs (layers-18pct.cfg: initW 0.0001
# in conv1, 0.01 in the other layers, biases 0) on raw mean-subtracted 0..255 pixels.
FIG1_INITS = {"pytorch": 1 / 64, "cuda-convnet": 1.0}  # init -> input scale
_CUDA_CONVNET_STD = (1e-4, 1e-2, 1e-2, 1e-2)  # conv1, conv2, conv3, fc


def four_layer_cnn(
    in_channels: int, num_classes: int, size: int, activation: str, init: str = "pytorch"
) -> nn.Sequential:
    """A four-layer net after cuda-convnet's CIFAR-10 examples: conv 5x5 32 -> pool 3/2 ->
    conv 5x5 32 -> pool 3/2 -> conv 5x5 64 -> pool 3/2 -> fully connected; no normalisation,
    no dropout (their layers-80sec.cfg averages in pool2/3 and has two fc layers)."""
    if init not in FIG1_INITS:
        raise ValueError(f"unknown init {init!r}; choose from {sorted(FIG1_INITS)}")
    act = nn.ReLU if activation == "relu" else nn.Tanh
    side = size
    for _ in range(3):
        side = -(-(side - 3) // 2) + 1  # ceil-mode 3/2 pooling, as cuda-convnet
    net = nn.Sequential(
        nn.Conv2d(in_channels, 32, 5, padding=2), act(), nn.MaxPool2d(3, 2, ceil_mode=True),
        nn.Conv2d(32, 32, 5, padding=2), act(), nn.MaxPool2d(3, 2, ceil_mode=True),
        nn.Conv2d(32, 64, 5, padding=2), act(), nn.MaxPool2d(3, 2, ceil_mode=True),
        nn.Flatten(), nn.Linear(64 * side * side, num_classes),
    )  # fmt: skip
    if init == "cuda-convnet":
        layers = [m for m in net if isinstance(m, nn.Conv2d | nn.Linear)]
        for layer, std in zip(layers, _CUDA_CONVNET_STD, strict=True):
            nn.init.normal_(layer.weight, 0.0, std)
            nn.init.zeros_(layer.bias)
    return net


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
    init: str = "pytorch",
) -> dict[str, Any]:
    """Plain SGD (momentum 0.9, no weight decay, no augmentation); the running training
    error is recorded ``points`` times per epoch. ``stop_below``: end the run once a point
    reaches it (Figure 1 needs the epochs to get there, not the rest of the curve). A run
    also ends on a non-finite loss, or after two whole epochs at chance level."""
    from ..data.dataset import LoaderSpec, Prepared, make_loader

    data = Prepared(data_dir)
    h, _, c = data.image_size
    torch.manual_seed(seed)
    model = four_layer_cnn(c, data.num_classes, h, activation, init)
    model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    spec = LoaderSpec(train=True, flip=False, pca_std=0.0)
    prep = data.preprocessing(crop=h, input_scale=FIG1_INITS[init])
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
    diverged = reached = stuck = False
    chance = 1 - 1 / data.num_classes
    at_chance = 0  # consecutive whole epochs at chance level
    for epoch in range(epochs):
        loader.sampler.set_epoch(epoch)
        epoch_wrong = epoch_seen = 0
        for i, (x, y) in enumerate(loader):
            logits = model(x)
            loss = nn.functional.cross_entropy(logits, y)
            if not torch.isfinite(loss):
                diverged = True
                break
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            miss = int((logits.argmax(1) != y).sum())
            wrong, seen = wrong + miss, seen + len(y)
            epoch_wrong, epoch_seen = epoch_wrong + miss, epoch_seen + len(y)
            if (i + 1) % every == 0 or i + 1 == steps:
                curve.append((epoch + (i + 1) / steps, wrong / seen))
                wrong = seen = 0
                if stop_below is not None and curve[-1][1] <= stop_below:
                    reached = True
                    break
        if diverged or reached:
            break
        # Two whole epochs at chance (e.g. every ReLU dead): this lr will not get there.
        at_chance = at_chance + 1 if epoch_wrong >= (chance - 0.01) * epoch_seen else 0
        if at_chance == 2:
            stuck = True
            break
    return {"activation": activation, "lr": lr, "seed": seed, "init": init, "curve": curve, "seconds": time.perf_counter() - t0,
            "diverged": diverged, "stuck_at_chance": stuck,
            "seconds_per_epoch": (time.perf_counter() - t0) / max(1, len(curve) / points)}  # fmt: skip


def relu_vs_tanh(
    data: str, out: str, epochs: int = 10, lrs: tuple[float, ...] = (0.001, 0.003, 0.01, 0.03),
    seeds: tuple[int, ...] = (0,), threshold: float = 0.25, points: int = 10, batch: int = 128,
    limit: int = 0, progress: bool = True, init: str = "pytorch",
) -> dict[str, Any]:  # fmt: skip
    """Figure 1. The lr sweep runs on the first seed; the other seeds repeat each side's
    best lr (the paper chose each net's lr "to make training as fast as possible"). Every
    (activation, lr, seed) run is stored in ``out/runs.json`` as it finishes and skipped on
    a rerun."""
    if not seeds or not lrs:
        raise ValueError("relu-vs-tanh needs at least one seed and one learning rate")
    if init not in FIG1_INITS:
        raise ValueError(f"unknown init {init!r}; choose from {sorted(FIG1_INITS)}")
    out_dir = Path(out)
    store = out_dir / "runs.json"
    runs: list[dict[str, Any]] = json.loads(store.read_text()) if store.is_file() else []
    other = {r.get("init", "pytorch") for r in runs} - {init}
    if other:
        raise ValueError(
            f"{store} holds runs with init {sorted(other)[0]!r}, not {init!r}: use another --out"
        )
    data_dir = _resolve_data(data)
    out_dir.mkdir(parents=True, exist_ok=True)

    def run_once(act: str, lr: float, seed: int) -> None:
        if _find(runs, act, lr, seed) is not None:
            return
        if progress:
            print(f"relu-vs-tanh: {act}, lr {lr}, seed {seed} ...", flush=True)
        runs.append(
            _train_curve(data_dir, act, lr, epochs, seed, points, batch, limit, threshold, init)
        )
        write_json(store, runs, indent=None)

    for act in ("relu", "tanh"):
        for lr in lrs:
            run_once(act, lr, seeds[0])
        best = best_lr(runs, act, lrs, seeds[0], threshold)
        first = _find(runs, act, best, seeds[0])
        if first is None or _hit(first, threshold) is None:
            # No lr reached it on the first seed: more seeds cannot make a ratio.
            continue
        for seed in seeds[1:]:
            run_once(act, best, seed)
    result = summarise_relu_tanh(runs, threshold, lrs, seeds)
    result.update(
        {
            "data": data_dir,
            "init": init,
            "input_scale": FIG1_INITS[init],
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


def _find(runs: list[dict[str, Any]], act: str, lr: float, seed: int) -> dict[str, Any] | None:
    return next(
        (
            r
            for r in runs
            if r["activation"] == act and float(r["lr"]) == float(lr) and r["seed"] == seed
        ),
        None,
    )


def _hit(run: dict[str, Any], threshold: float) -> float | None:
    return epochs_to_threshold([tuple(p) for p in run["curve"]], threshold)


def best_lr(
    runs: list[dict[str, Any]], act: str, lrs: tuple[float, ...], seed: int, threshold: float
) -> float:
    """The lr whose ``seed`` run reaches the threshold in the fewest epochs (ties: the lower
    final error); if none does, the one with the lowest final training error. Diverged runs
    and runs not made yet come last."""

    def key(lr: float) -> tuple[float, float]:
        r = _find(runs, act, lr, seed)
        if r is None or not r["curve"]:
            return (float("inf"), float("inf"))
        if r.get("diverged") or r.get("stuck_at_chance"):
            return (float("inf"), 2.0)  # after any finite error (at most 1)
        hit = _hit(r, threshold)
        return (float("inf") if hit is None else hit, r["curve"][-1][1])

    return min(lrs, key=key)


def summarise_relu_tanh(
    runs: list[dict[str, Any]], threshold: float, lrs: tuple[float, ...], seeds: tuple[int, ...]
) -> dict[str, Any]:
    """Per activation: the best lr on the first seed, and the epochs to the threshold at that
    lr for every seed and their mean (None unless every seed reached it)."""
    best: dict[str, Any] = {}
    for act in ("relu", "tanh"):
        lr = best_lr(runs, act, lrs, seeds[0], threshold)
        found = {seed: _find(runs, act, lr, seed) for seed in seeds}
        if found[seeds[0]] is None:
            best[act] = None
            continue
        hits = [None if r is None else _hit(r, threshold) for r in found.values()]
        done = [r for r in found.values() if r is not None]
        epochs = statistics.mean(hits) if all(h is not None for h in hits) else None  # type: ignore[type-var]
        spe = statistics.mean(r["seconds_per_epoch"] for r in done)
        best[act] = {
            "lr": lr,
            "epochs": epochs,
            "epochs_per_seed": hits,
            "missed_seeds": [seed for seed, h in zip(seeds, hits, strict=True) if h is None],
            "seconds": None if epochs is None else epochs * spe,
        }
    ratio = None
    per_seed: list[float] = []
    if best["relu"] and best["tanh"] and best["relu"]["epochs"] and best["tanh"]["epochs"]:
        ratio = best["tanh"]["epochs"] / best["relu"]["epochs"]
        # Seed by seed, each side at its best lr: the spread of the ratio.
        per_seed = [
            t / r
            for t, r in zip(
                best["tanh"]["epochs_per_seed"], best["relu"]["epochs_per_seed"], strict=True
            )
        ]
    spread = statistics.stdev(per_seed) if len(per_seed) > 1 else None
    sweep = {  # the first seed's epochs to the threshold at every lr (None: not reached)
        act: {
            str(lr): _hit(r, threshold)
            for lr in lrs
            if (r := _find(runs, act, lr, seeds[0])) is not None
        }
        for act in ("relu", "tanh")
    }
    return {
        "best": best,
        "sweep": sweep,
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
        r = _find(runs, act, b["lr"], result["seeds"][0]) if b else None
        if r is not None and r["curve"]:
            e, err = zip(*r["curve"], strict=True)
            ax.plot(e, [100 * v for v in err], style, label=f"{act} (lr {float(r['lr']):g})")
    ax.axhline(
        100 * result["threshold"],
        color="grey",
        linestyle=":",
        label=f"{100 * result['threshold']:.0f}% training error",
    )
    ax.set_xlabel("epochs")
    ax.set_ylabel("training error (%)")
    sp = result["speedup_epochs"]
    init = result.get("init", "pytorch")
    ax.set_title(
        f"ReLU vs tanh ({init} init): {sp:.2f}x fewer epochs to 25%"
        if sp
        else f"ReLU vs tanh ({init} init): 25% not reached by both"
    )
    ax.grid(alpha=0.3)
    ax.legend()
    return _save(fig, out)


# --------------------------------------------------------------------------------------
# Ablations

# name -> (overrides, the paper's effect, the sign of the change in test error the paper
# reports for it: +1 removing it hurts, -1 it helps, None no final-error claim).
ABLATIONS: dict[str, tuple[list[str], str, int | None]] = {
    "lrn": (["model.norm=none"], "+1.4 / +1.2 (§3.3)", 1),
    "overlap-pool": (["model.pooling=non-overlapping"], "+0.4 / +0.3 (§3.4)", 1),
    "dropout": (["model.dropout=0.0"], "heavy overfitting (§4.2)", 1),
    "pca": (["data.pca_std=0.0"], "over +1 top-1 (§4.1)", 1),
    "flip": (["data.flip=false"], "— (§4.1)", None),
    "towers": (
        ["model.towers=1", "model.width=0.5"],
        "+1.7 / +1.2 one tower, half the kernels (§3.2)",
        1,
    ),
    "relu": (["model.activation=tanh"], "~6x slower to train (Figure 1)", None),
    "conv3": (["model.drop_conv=[conv3]"], "about +2 top-1 (§7)", 1),
    "conv4": (["model.drop_conv=[conv4]"], "about +2 top-1 (§7)", 1),
    "conv5": (["model.drop_conv=[conv5]"], "about +2 top-1 (§7)", 1),
    # §6's 1 CNN* was also pre-trained on all of ImageNet Fall 2011: no claim for the layer alone.
    "conv6": (["model.extra_conv6=true"], "adds a layer: 1 CNN* (§6)", None),
}


def ablation(
    data: str, out: str, ablate: list[str], preset: str | None = None, seeds: int = 1, epochs: int | None = None,
    overrides: list[str] | None = None, progress: bool = True, table_only: bool = False,
    first_seed: int = 0,
) -> dict[str, Any]:  # fmt: skip
    """Train the baseline and each ablated variant for seeds ``first_seed`` ..
    ``first_seed + seeds - 1`` (skipping finished runs) and write the table; ``table_only``
    writes the table of the runs finished so far. Each run lives in ``out/VARIANT/seedK``,
    so seeds run on different machines can be gathered in one ``out`` afterwards."""
    from ..config import load_train_config
    from ..engine.train import TrainingDiverged, train

    if seeds < 1:
        raise ValueError(f"ablation needs --seeds >= 1, got {seeds}")
    if first_seed < 0:
        raise ValueError(f"ablation needs --first-seed >= 0, got {first_seed}")
    seed_ids = range(first_seed, first_seed + seeds)
    unknown = [a for a in ablate if a not in ABLATIONS]
    if unknown:
        raise ValueError(f"unknown ablation {unknown[0]!r}; choose from {sorted(ABLATIONS)}")
    data_dir = _resolve_data(data)
    if preset is None:
        preset = data if data in ("cifar10", "fashion-mnist") else "imagenet-paper"
    base = [f"data.path={data_dir}", *(overrides or [])]
    if epochs:
        base.append(f"run.epochs={epochs}")
    from ..data.dataset import Prepared
    from ..data.transforms import views_label

    prepared = Prepared(data_dir)
    if "val" not in prepared.splits():
        raise ValueError(f"{data_dir} has no val split: ablations score each run on it")
    baseline_cfg = load_train_config(preset, None, base)
    views = baseline_cfg.data.val_views
    metric = f"last epoch's validation error, {views_label(views, None, None)}"
    out_dir = Path(out)
    variants = ["baseline", *ablate]
    # Every run already started or finished (some may have been gathered from other
    # machines) must have been trained with the recipe its row claims.
    for variant in variants:
        extra = [] if variant == "baseline" else ABLATIONS[variant][0]
        saved = [out_dir / variant / f"seed{seed}" / "config.yaml" for seed in seed_ids]
        saved = [f for f in saved if f.is_file()]
        expected = load_train_config(preset, None, [*base, *extra]) if saved else None
        for f in saved:
            _same_recipe(f, expected, prepared, preset)

    def finished() -> dict[str, list[dict[str, Any]]]:
        # The last epoch's error, not the best epoch's: the val split may be the test set
        # (CIFAR-10), and picking epochs on it would flatter every variant.
        results: dict[str, list[dict[str, Any]]] = {v: [] for v in variants}
        for variant in variants:
            for seed in seed_ids:
                f = out_dir / variant / f"seed{seed}" / "summary.json"
                if (f.parent / DIVERGED).is_file():
                    results[variant].append({"seed": seed, "diverged": True})
                elif f.is_file():
                    s = json.loads(f.read_text())
                    top1, top5 = s.get("final_val_top1_error"), s.get("final_val_top5_error")
                    if top1 is None:
                        raise ValueError(
                            f"{f}: the run has no validation result; ablations need a val split"
                        )
                    results[variant].append({"seed": seed, "top1": top1, "top5": top5})
        return results

    def write(results: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
        table = ablation_table(results)
        report = {"data": data_dir, "preset": preset, "seeds": seeds, "seed_ids": list(seed_ids),
                  "epochs": epochs, "metric": metric, "rows": table}  # fmt: skip
        write_json(out_dir / "ablation.json", report)
        with atomic_path(out_dir / "ablation.csv") as tmp, open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(table[0]))
            w.writeheader()
            for row in table:
                w.writerow(
                    {
                        **{k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()},
                        "seed_deltas_top1": " ".join(f"{d:+.2f}" for d in row["seed_deltas_top1"]),
                    }
                )
        write_text(out_dir / "ablation.md", ablation_markdown(report))
        return report

    # Seed-major: every variant's first seed before any second one, so an experiment run
    # in pieces has a complete (if noisier) table early. The table is rewritten after
    # every run, with each row's n.
    if table_only:
        if not finished()["baseline"]:
            raise ValueError(f"{out_dir}: no finished baseline run yet, so no table to write")
        return write(finished())
    for seed in seed_ids:
        for variant in variants:
            run_dir = out_dir / variant / f"seed{seed}"
            if (run_dir / "summary.json").is_file() or (run_dir / DIVERGED).is_file():
                continue
            if progress:
                print(f"ablation: {variant}, seed {seed} -> {run_dir}", flush=True)
            extra = [] if variant == "baseline" else ABLATIONS[variant][0]
            cfg = load_train_config(preset, None, [*base, *extra, f"run.seed={seed}"])
            # Resume a run cut short; one killed before its first checkpoint starts over.
            ckpt = (run_dir / "checkpoint.pt").is_file()
            try:
                train(cfg, run_dir, resume=ckpt, force=not ckpt, quiet=True)
            except TrainingDiverged as err:
                # A variant that cannot train is a result, not a reason to stop the rest.
                write_json(run_dir / DIVERGED, {"variant": variant, "seed": seed, "why": str(err)})
                if progress:
                    first = str(err).split(";")[0].split(" (")[0]
                    print(
                        f"ablation: {variant}, seed {seed} diverged: {first} "
                        f"(recorded in {run_dir / DIVERGED}); going on",
                        flush=True,
                    )
            if finished()["baseline"]:
                write(finished())
    return write(finished())


DIVERGED = "diverged.json"  # in a run directory: the run's loss became NaN/inf


# Settings that change how a run executes, not what it computes: a resumed experiment may
# use other ones (fewer threads, another device).
_EXECUTION_ONLY = frozenset({
    "run.device", "run.threads", "run.compile", "run.channels_last", "run.log_every",
    "run.checkpoint_every", "run.tower_devices", "data.workers", "data.decode",
    "model.conv_impl", "run.seed",
})  # fmt: skip


def _same_recipe(saved: Path, now: Any, data: Any, preset: str) -> None:
    """Refuse a run of an ablation whose recipe differs from what its variant gives now (an
    edited preset, other --set values, a folder gathered from another experiment): its rows
    would compare different recipes.
    Both sides are compared as training saw them: model settings resolved and shaped by
    the data (classes, channels, crop), execution-only settings ignored."""
    import dataclasses

    from ..config import ConfigError, TrainConfig, from_dict, load_yaml, saved_model_config, to_dict
    from ..engine.train import configure_model_from_data

    if not saved.is_file():
        return
    try:
        raw = load_yaml(saved)
        raw["model"] = saved_model_config(raw.get("model") or {})
        then_cfg = from_dict(TrainConfig, raw)
    except ConfigError as err:
        raise ValueError(
            f"{saved}: cannot read this run's config to check the recipe "
            f"({err}); start a new ablation with another --out"
        ) from None

    def flat(cfg: TrainConfig) -> dict[str, Any]:
        cfg = dataclasses.replace(cfg, model=cfg.model.resolved())
        return _flat(to_dict(cfg))

    then = flat(then_cfg)
    current = flat(configure_model_from_data(now, data, lambda msg: None))
    # The same folder however it is spelled; a saved relative path that does not lead
    # anywhere from here (another working directory) cannot be checked and passes.
    p_then, p_now = Path(then["data.path"]), Path(current["data.path"])
    if not p_then.exists() or (p_now.exists() and p_then.samefile(p_now)):
        then["data.path"] = current["data.path"]
    changed = [
        f"{k} was {then.get(k)!r}, now {current.get(k)!r}"
        for k in sorted(set(then) | set(current))
        if k not in _EXECUTION_ONLY and then.get(k) != current.get(k)
    ]
    if changed:
        more = f" and {len(changed) - 6} more" if len(changed) > 6 else ""
        raise ValueError(
            f"{saved} was trained with another recipe than preset {preset!r} with these "
            f"settings gives its variant ({'; '.join(changed[:6])}{more}); continue the "
            "ablation with --set for the old values, or start a new one with another --out"
        )


def _flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.mean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def _label(variant: str) -> str:
    return {"baseline": "baseline", "conv6": "with conv6", "relu": "tanh instead of relu"}.get(
        variant, f"without {variant}"
    )


def ablation_table(results: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Rows of mean +- std (percent) per variant, and the difference to the baseline over
    the seeds both have (a table written part-way compares like with like)."""

    def by_seed(rs: list[dict[str, Any]]) -> dict[int, dict[str, Any]]:
        # Diverged runs have no error to average; each row counts them separately.
        return {r.get("seed", i): r for i, r in enumerate(rs) if not r.get("diverged")}

    base = by_seed(results.get("baseline") or [])

    def deltas(rs: list[dict[str, Any]], key: str) -> list[float]:
        return [100 * (r[key] - base[s][key]) for s, r in by_seed(rs).items() if s in base]

    def delta(rs: list[dict[str, Any]], key: str) -> float | None:
        d = deltas(rs, key)
        return statistics.mean(d) if d else None

    def agrees(variant: str, rs: list[dict[str, Any]]) -> str:
        """yes/no when every seed's top-1 difference has/lacks the paper's sign, else mixed;
        blank below two seeds paired with the baseline."""
        sign = None if variant == "baseline" else ABLATIONS[variant][2]
        d = deltas(rs, "top1")
        if sign is None or len(d) < 2:  # one seed is no verdict
            return ""
        if all(sign * v > 0 for v in d):
            return "yes"
        if all(sign * v < 0 for v in d):
            return "no"
        return "mixed"

    rows = []
    for variant, rs in results.items():
        if not rs:
            continue
        done = list(by_seed(rs).values())
        m1, s1 = _mean_std([100 * r["top1"] for r in done]) if done else (None, None)
        m5, s5 = _mean_std([100 * r["top5"] for r in done]) if done else (None, None)
        rows.append(
            {
                "variant": _label(variant),
                "top1_error": m1,
                "top1_std": s1,
                "top5_error": m5,
                "top5_std": s5,
                "delta_top1": delta(rs, "top1"),
                "delta_top5": delta(rs, "top5"),
                "n": len(done),
                "diverged": len(rs) - len(done),
                "seed_deltas_top1": deltas(rs, "top1") if variant != "baseline" else [],
                "paper": "" if variant == "baseline" else ABLATIONS[variant][1],
                "sign_agrees": agrees(variant, rs),
            }
        )
    return rows


def ablation_markdown(report: dict[str, Any]) -> str:
    """The table as Markdown (``ablation.md``), ready for a README."""

    def num(v: float | None, signed: bool = False) -> str:
        return "n/a" if v is None else (f"{v:+.2f}" if signed else f"{v:.2f}")

    def err(mean: float | None, std: float | None, n: int) -> str:
        return num(mean) + (f" ± {std:.2f}" if n > 1 and std is not None else "")

    lines = [
        "| variant | top-1 error % | top-5 error % | Δ top-1 (per seed) | Δ top-5 | seeds | "
        "the paper (removing it, on ImageNet) | same sign as the paper |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in report["rows"]:
        per_seed = ", ".join(f"{d:+.2f}" for d in r.get("seed_deltas_top1") or [])
        d1 = "" if r["variant"] == "baseline" else num(r["delta_top1"], True)
        d1 += f" ({per_seed})" if len(r.get("seed_deltas_top1") or []) > 1 else ""
        d5 = "" if r["variant"] == "baseline" else num(r["delta_top5"], True)
        n = f"{r['n']}" + (f" (+{r['diverged']} diverged)" if r.get("diverged") else "")
        lines.append(
            f"| {r['variant']} | {err(r['top1_error'], r['top1_std'], r['n'])} | "
            f"{err(r['top5_error'], r['top5_std'], r['n'])} | {d1} | {d5} | {n} | {r['paper']} | "
            f"{r.get('sign_agrees', '')} |"
        )
    lines += [
        "",
        f"{report.get('metric', 'validation error')}; preset {report['preset']}, data "
        f"{report['data']}; seeds: how many finished of the {report['seeds']} asked for{_seed_ids(report)}; Δ: against the baseline's "
        "same seeds; same sign: every seed's top-1 difference has the sign of the paper's "
        "effect (yes), none has (no), or some do (mixed); blank below two seeds.",
        "",
    ]
    return "\n".join(lines)


def _seed_ids(report: dict[str, Any]) -> str:
    ids = report.get("seed_ids")
    return f" ({', '.join(str(i) for i in ids)})" if ids else ""  # asked for, not finished


def format_ablation(report: dict[str, Any]) -> str:
    lines = [
        f"{'variant':<24} {'top-1 error %':>16} {'top-5 error %':>16} {'Δ top-1':>8} {'Δ top-5':>8} {'n':>2}  paper (removing it)"
    ]

    def signed(v: float | None) -> str:
        return f"{'n/a':>8}" if v is None else f"{v:>+8.2f}"

    def error(mean: float | None, std: float | None) -> str:
        return f"{'n/a':>16}" if mean is None else f"{mean:>8.2f} ± {std:<5.2f}"

    for r in report["rows"]:
        gone = f" ({r['diverged']} diverged)" if r.get("diverged") else ""
        paper = f"  {r['paper']}" if r["paper"] else ""
        lines.append(
            f"{r['variant']:<24} {error(r['top1_error'], r['top1_std'])} {error(r['top5_error'], r['top5_std'])} "
            f"{signed(r['delta_top1'])} {signed(r['delta_top5'])} {r['n']:>2}{paper}{gone}"
            + (f" [same sign: {r['sign_agrees']}]" if r.get("sign_agrees") else "")
        )
    lines.append(
        f"n: seeds finished of the {report['seeds']} asked for{_seed_ids(report)}, diverged runs not counted; "
        "Δ: against the baseline's same seeds; "
        f"{report.get('metric', 'validation error')}; "
        f"preset {report['preset']}, data {report['data']}"
    )
    return "\n".join(lines)


def format_relu_tanh(r: dict[str, Any]) -> str:
    goal = f"{100 * r['threshold']:.0f}% training error"

    def line(act: str) -> str:
        b = r["best"][act]
        if not b:
            return f"  {act}: no runs"
        if b["epochs"] is None:
            missed = ", ".join(str(s) for s in b["missed_seeds"])
            return f"  {act}: lr {b['lr']:g}: seed(s) {missed} did not reach {goal} within {r['epochs']} epochs"
        return f"  {act}: lr {b['lr']:g}, {b['epochs']:.2f} epochs ({b['seconds']:.0f} s) to {goal}"

    sp = r["speedup_epochs"]
    spread = f" ± {r['speedup_std']:.2f} over seeds" if r.get("speedup_std") is not None else ""
    tail = (
        f"  ReLU reaches it {sp:.2f}x{spread} faster in epochs (paper: 6x on CIFAR-10)"
        if sp
        else "  no ratio: a side did not reach the threshold on every seed"
    )
    swept = [
        f"  seed {r['seeds'][0]}, {act}: "
        + ", ".join(
            f"lr {lr} {'-' if e is None else f'{e:.2f}'}"
            for lr, e in r.get("sweep", {}).get(act, {}).items()
        )
        for act in ("relu", "tanh")
    ]
    return "\n".join(
        [
            f"Figure 1 on {r['data']} ({r.get('init', 'pytorch')} init, seeds {r['seeds']}, lrs {r['lrs']})",
            line("relu"),
            line("tanh"),
            tail,
            "  the lr sweep (epochs to the threshold; -: not reached):",
            *swept,
        ]
    )
