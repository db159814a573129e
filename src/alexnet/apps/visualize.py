"""The paper's figures from a user's own run (``alexnet visualize ...``), as PNG and SVG.

filters      Figure 3: the conv1 kernels, each normalised for display, one block per tower.
predictions  Figure 4 left: test images with their top-5 labels as bars, the true one marked.
neighbors    Figure 4 right: query images and their six nearest training images by fc7.
curves       loss and top-1/top-5 error per epoch, train and val, lr drops marked.
confusion    a confusion matrix (datasets with few classes).
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import numpy as np

from ..atomic import atomic_path


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, out: str | Path) -> list[str]:
    """Write ``out`` as .png and .svg; returns both paths."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    stem = out.with_suffix("")
    paths = []
    for ext in (".png", ".svg"):
        with atomic_path(stem.with_suffix(ext)) as tmp:
            fig.savefig(tmp, dpi=120, bbox_inches="tight", format=ext[1:])
        paths.append(str(stem.with_suffix(ext)))
    _plt().close(fig)
    return paths


def _display(img: np.ndarray) -> np.ndarray:
    """(H, W, C) uint8 -> something imshow draws: grey for one channel."""
    return img[..., 0] if img.shape[-1] == 1 else img


# --------------------------------------------------------------------------------------


def filters(weights: str, out: str) -> list[str]:
    """Figure 3: conv1's kernels (96 x 11 x 11 x 3 for the paper), towers side by side."""
    from ..engine.inference import load_model

    lm = load_model(weights)
    w = lm.model.conv1.weight.detach().float().cpu().numpy()  # (K, C, h, w)
    k = w.shape[0]
    towers = lm.model.cfg.towers or 1
    per = k // towers
    plt = _plt()
    cols = 8 if per >= 8 else per
    rows = -(-per // cols)
    fig, axes = plt.subplots(
        1, towers, figsize=(3.2 * towers * cols / 8 + 0.5, 3.2 * rows / 6 + 0.8), squeeze=False
    )
    for t in range(towers):
        tiles = []
        for i in range(t * per, (t + 1) * per):
            kern = w[i].transpose(1, 2, 0)
            lo, hi = kern.min(), kern.max()
            tiles.append((kern - lo) / (hi - lo + 1e-12))  # each kernel stretched to [0, 1]
        h, ww, c = tiles[0].shape
        pad = 1
        grid = np.ones((rows * (h + pad) + pad, cols * (ww + pad) + pad, c))
        for n, tile in enumerate(tiles):
            r, q = divmod(n, cols)
            grid[
                pad + r * (h + pad) : pad + r * (h + pad) + h,
                pad + q * (ww + pad) : pad + q * (ww + pad) + ww,
            ] = tile
        ax = axes[0][t]
        ax.imshow(
            grid[..., 0] if c == 1 else grid,
            cmap="gray" if c == 1 else None,
            interpolation="nearest",
        )
        ax.set_title(
            f"tower {t + 1}: kernels {t * per + 1}-{(t + 1) * per}"
            if towers > 1
            else f"conv1: {k} kernels"
        )
        ax.axis("off")
    fig.suptitle(
        f"conv1 kernels ({k} x {w.shape[2]}x{w.shape[3]}x{w.shape[1]}) — {Path(weights).name}"
    )
    return _save(fig, out)


def read_metrics(run_dir: str | Path) -> list[dict[str, float]]:
    path = Path(run_dir) / "metrics.csv"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found; is {run_dir} a training run directory?")
    rows = []
    with open(path) as f:
        for row in csv.DictReader(f):
            rows.append(
                {k: float(v) if v not in ("", None) else float("nan") for k, v in row.items()}
            )
    if not rows:
        raise ValueError(f"{path} has no epochs yet")
    return rows


def _schedule_kind(run_dir: str) -> str | None:
    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        return None
    import yaml

    return ((yaml.safe_load(path.read_text()) or {}).get("schedule") or {}).get("kind")


def lr_drops(rows: list[dict[str, float]], kind: str | None) -> list[tuple[float, float]]:
    """(epoch, factor) where a step or plateau schedule divided the lr before that epoch."""
    if kind not in ("step", "plateau"):
        return []
    return [
        (rows[i]["epoch"], rows[i - 1]["lr"] / rows[i]["lr"])
        for i in range(1, len(rows))
        if rows[i]["lr"] < rows[i - 1]["lr"] * 0.99
    ]


def curves(run_dir: str, out: str) -> list[str]:
    """Loss and top-1/top-5 error vs epoch, train and val, with the schedule's lr drops
    marked."""
    rows = read_metrics(run_dir)
    ep = [r["epoch"] for r in rows]
    plt = _plt()
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4))
    a1.plot(ep, [r["train_loss"] for r in rows], "o-", label="train")
    a1.plot(ep, [r["val_loss"] for r in rows], "s-", label="val")
    a1.set_xlabel("epoch")
    a1.set_ylabel("cross-entropy loss")
    for key, style in (
        ("train_top1_error", "o-"),
        ("val_top1_error", "s-"),
        ("train_top5_error", "o--"),
        ("val_top5_error", "s--"),
    ):
        a2.plot(
            ep,
            [100 * r[key] for r in rows],
            style,
            label=key.replace("_error", "").replace("_", " "),
        )
    a2.set_xlabel("epoch")
    a2.set_ylabel("error (%)")
    # The schedule's own lr changes, marked where it made them: the step and plateau
    # schedules divide the lr between epochs; warm-up, one-cycle and cosine move it every
    # step, and nothing is marked for them.
    drops = lr_drops(rows, _schedule_kind(run_dir))
    for ax in (a1, a2):
        for d, _ in drops:
            ax.axvline(d - 0.5, color="grey", linestyle=":", linewidth=1)
        ax.grid(alpha=0.3)
        ax.legend()
    for d, factor in drops:
        a2.text(d - 0.5, a2.get_ylim()[1], f" lr /{factor:.3g}", va="top", fontsize=8, color="grey")
    fig.suptitle(f"training curves — {Path(run_dir).name}")
    return _save(fig, out)


def confusion(
    weights: str, data_dir: str, out: str, split: str = "val", max_classes: int = 30
) -> list[str]:
    import torch

    from ..data.dataset import Prepared, make_loader
    from ..engine.inference import load_model
    from ..engine.metrics import model_outputs

    data = Prepared(data_dir)
    if data.num_classes > max_classes:
        raise ValueError(
            f"{data.num_classes} classes: a confusion matrix is readable for up to {max_classes}"
        )
    lm = load_model(weights)
    lm.prep.check_data(data.image_size, data.classes, f"{data_dir} ({split})")
    cpu = torch.device("cpu")
    loader = make_loader(data, split, lm.loader_spec(), 256, cpu, lm.prep, workers=0)
    m = np.zeros((data.num_classes, data.num_classes), dtype=np.int64)
    for probs, batch in model_outputs(lm.model, loader.batches(), cpu):
        np.add.at(m, (batch["labels"].numpy(), probs.argmax(1).numpy()), 1)
    plt = _plt()
    fig, ax = plt.subplots(figsize=(1 + 0.55 * data.num_classes, 0.8 + 0.5 * data.num_classes))
    norm = m / np.maximum(m.sum(1, keepdims=True), 1)
    ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    for i in range(m.shape[0]):
        for j in range(m.shape[1]):
            if m[i, j]:
                ax.text(
                    j,
                    i,
                    str(m[i, j]),
                    ha="center",
                    va="center",
                    fontsize=7,
                    color="white" if norm[i, j] > 0.5 else "black",
                )
    ax.set_xticks(range(data.num_classes), data.names, rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(data.num_classes), data.names, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"confusion matrix, {split}: {int(np.trace(m))}/{int(m.sum())} correct")
    return _save(fig, out)


def _sample_indices(n: int, count: int, seed: int) -> np.ndarray:
    return np.sort(np.random.default_rng(seed).choice(n, size=min(count, n), replace=False))


def predictions(
    weights: str, data_dir: str, out: str, split: str = "val", count: int = 8, seed: int = 0
) -> list[str]:
    """Figure 4 left: each image above its five most probable labels, the true one in red."""
    import torch

    from ..data.dataset import Prepared
    from ..engine.inference import images_to_inputs, load_model
    from ..engine.metrics import model_outputs

    data = Prepared(data_dir)
    lm = load_model(weights)
    lm.prep.check_data(data.image_size, data.classes, f"{data_dir} ({split})")
    sp = data.split(split)
    idx = _sample_indices(len(sp), count, seed)
    images = [sp.image(int(i)) for i in idx]
    labels = [int(sp.labels[i]) for i in idx]
    batch = {"inputs": images_to_inputs(images, lm)}
    probs = next(model_outputs(lm.model, [batch], torch.device("cpu")))[0].numpy()
    plt = _plt()
    cols = min(4, len(idx))
    rows = -(-len(idx) // cols)
    fig, axes = plt.subplots(2 * rows, cols, figsize=(3.2 * cols, 5.2 * rows), squeeze=False,
                             gridspec_kw={"height_ratios": [3, 2] * rows})  # fmt: skip
    for n, (img, y, p) in enumerate(zip(images, labels, probs, strict=True)):
        r, c = divmod(n, cols)
        ax_img, ax_bar = axes[2 * r][c], axes[2 * r + 1][c]
        ax_img.imshow(_display(img), cmap="gray" if img.shape[-1] == 1 else None)
        ax_img.set_title(data.names[y], fontsize=9)
        ax_img.axis("off")
        top = np.argsort(p)[::-1][:5]
        colours = ["tab:red" if t == y else "tab:blue" for t in top]
        ax_bar.barh(range(len(top))[::-1], p[top], color=colours)
        ax_bar.set_yticks(range(len(top))[::-1], [data.names[t][:22] for t in top], fontsize=8)
        ax_bar.set_xlim(0, 1)
        ax_bar.tick_params(axis="x", labelsize=7)
    for n in range(len(idx), rows * cols):
        r, c = divmod(n, cols)
        axes[2 * r][c].axis("off")
        axes[2 * r + 1][c].axis("off")
    fig.suptitle("top-5 predictions (true label in red when among them)")
    fig.tight_layout()
    return _save(fig, out)


def neighbors(
    weights: str, data_dir: str, out: str, query_split: str = "val", gallery_split: str = "train",
    count: int = 5, k: int = 6, seed: int = 0,
) -> list[str]:  # fmt: skip
    """Figure 4 right: query images (first column) and their k nearest training images by
    Euclidean distance between fc7 vectors."""
    import torch

    from ..data.dataset import Prepared, make_loader
    from ..engine.inference import images_to_inputs, load_model
    from ..engine.metrics import model_outputs
    from .retrieval import nearest

    data = Prepared(data_dir)
    lm = load_model(weights)
    cpu = torch.device("cpu")
    loader = make_loader(data, gallery_split, lm.loader_spec(), 256, cpu, lm.prep, workers=0)
    gallery = np.zeros(
        (len(data.split(gallery_split)), lm.model.fc7.out_features), dtype=np.float32
    )
    for feats, b in model_outputs(lm.model, loader.batches(), cpu, features=True):
        gallery[b["indices"].numpy()] = feats.numpy()
    qs = data.split(query_split)
    idx = _sample_indices(len(qs), count, seed)
    q_images = [qs.image(int(i)) for i in idx]
    query = [{"inputs": images_to_inputs(q_images, lm)}]
    q_feats = next(model_outputs(lm.model, query, cpu, features=True))[0]
    _, nn_idx = nearest(q_feats, gallery, k=k, exclude_self=query_split == gallery_split and False)
    gs = data.split(gallery_split)
    plt = _plt()
    fig, axes = plt.subplots(
        len(idx), k + 1, figsize=(1.6 * (k + 1), 1.7 * len(idx)), squeeze=False
    )
    for r, (img, i) in enumerate(zip(q_images, idx, strict=True)):
        axes[r][0].imshow(_display(img), cmap="gray" if img.shape[-1] == 1 else None)
        axes[r][0].set_title(
            f"query: {data.names[int(qs.labels[i])]}"[:24], fontsize=7, color="tab:red"
        )
        for c, j in enumerate(nn_idx[r].tolist(), start=1):
            g = gs.image(int(j))
            axes[r][c].imshow(_display(g), cmap="gray" if g.shape[-1] == 1 else None)
            axes[r][c].set_title(data.names[int(gs.labels[j])][:18], fontsize=7)
    for ax in axes.flat:
        ax.axis("off")
    fig.suptitle(f"{k} nearest {gallery_split} images by fc7 distance")
    fig.tight_layout()
    return _save(fig, out)
