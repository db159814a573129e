"""``alexnet prepare SRC DST``: the paper's preprocessing, done once (§2).

Image datasets: shorter side to 256, central 256x256 crop, stored as JPEG (quality 90 by
default) with an offsets/labels index. Small datasets (CIFAR-10, Fashion-MNIST) keep their
native size as raw uint8 arrays. Either way ``mean.npy`` holds the per-pixel mean image of
the training split and ``meta.json`` the RGB covariance's eigenvalues/eigenvectors, both
accumulated streaming in float64.

Interrupt-safe: every file is written under a ``.tmp`` name and renamed when complete;
``meta.json`` comes last. A finished split is kept on the next run (with its statistics in
``train.stats.npz``); anything half-written is removed and rebuilt.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import time
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np

from ..atomic import atomic_path, write_json, write_text
from ..progress import bar as progress_bar
from .dataset import FORMAT, FORMAT_VERSION, INDEX_DTYPE
from .images import ImageError, encode_jpeg, load_image
from .sources import (
    ArraySource,
    DataError,
    FileSplit,
    Source,
    class_counts,
    open_source,
)

CHUNK = 32


# --------------------------------------------------------------------------------------
# Statistics: per-pixel mean image and RGB covariance, streaming in float64


@dataclass
class PixelStats:
    image_sum: np.ndarray  # (H, W, C) float64
    count: int = 0  # images
    pixel_sum: np.ndarray = field(default_factory=lambda: np.zeros(3))
    outer_sum: np.ndarray = field(default_factory=lambda: np.zeros((3, 3)))
    pixels: int = 0

    @classmethod
    def empty(cls, shape: tuple[int, ...]) -> PixelStats:
        c = shape[-1]
        return cls(np.zeros(shape), 0, np.zeros(c), np.zeros((c, c)), 0)

    def add(self, images: np.ndarray) -> None:
        """Accumulate a (N, H, W, C) uint8 batch."""
        if len(images) == 0:
            return
        self.image_sum += images.sum(axis=0, dtype=np.float64)
        self.count += len(images)
        # Pixel values in [0, 1] (the units of the usual published ImageNet PCA constants).
        px = images.reshape(-1, images.shape[-1]).astype(np.float64) / 255.0
        self.pixel_sum += px.sum(axis=0)
        self.outer_sum += px.T @ px
        self.pixels += len(px)

    def merge(self, other: PixelStats) -> None:
        self.image_sum += other.image_sum
        self.count += other.count
        self.pixel_sum += other.pixel_sum
        self.outer_sum += other.outer_sum
        self.pixels += other.pixels

    def mean_image(self) -> np.ndarray:
        return (self.image_sum / max(self.count, 1)).astype(np.float32)

    def covariance(self) -> np.ndarray:
        n = max(self.pixels, 1)
        mu = self.pixel_sum / n
        return self.outer_sum / n - np.outer(mu, mu)

    def pca(self) -> tuple[np.ndarray, np.ndarray]:
        """Eigenvalues (descending) and eigenvectors (as columns) of the RGB covariance."""
        vals, vecs = np.linalg.eigh(self.covariance())
        order = np.argsort(vals)[::-1]
        return vals[order], vecs[:, order]

    def save(self, path: Path) -> None:
        with atomic_path(path) as tmp:
            np.savez(tmp, image_sum=self.image_sum, count=self.count, pixel_sum=self.pixel_sum,
                     outer_sum=self.outer_sum, pixels=self.pixels)  # fmt: skip

    @classmethod
    def load(cls, path: Path) -> PixelStats:
        z = np.load(path)
        return cls(
            z["image_sum"], int(z["count"]), z["pixel_sum"], z["outer_sum"], int(z["pixels"])
        )


def _process_chunk(
    args: tuple[list[tuple[str, int]], int, int, int | None, bool],
) -> dict[str, Any]:
    items, size, quality, max_pixels, with_stats = args
    blobs, labels, paths, problems, images = [], [], [], [], []
    for path, label in items:
        try:
            img = load_image(path, size, max_pixels)
        except ImageError as err:
            problems.append((path, str(err)))
            continue
        blobs.append(encode_jpeg(img, quality))
        labels.append(label)
        paths.append(path)
        if with_stats:
            images.append(img)
    stats = None
    if with_stats:
        stats = PixelStats.empty((size, size, 3))
        if images:
            stats.add(np.stack(images))
    return {"blobs": blobs, "labels": labels, "paths": paths, "problems": problems, "stats": stats}


def _worker_init() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles interrupts
    try:
        import torch

        torch.set_num_threads(1)
    except ImportError:  # pragma: no cover
        pass


# --------------------------------------------------------------------------------------
# Writing


def _save_npy(path: Path, array: np.ndarray) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.save(f, array)


@dataclass
class SplitResult:
    count: int
    bytes: int
    problems: list[tuple[str, str]]
    stats: PixelStats | None


def _write_file_split(
    split: FileSplit, name: str, dst: Path, size: int, quality: int, workers: int,
    max_pixels: int | None, with_stats: bool, progress: bool,
) -> SplitResult:  # fmt: skip
    items = [(str(p), int(y)) for p, y in zip(split.paths, split.labels, strict=True)]
    chunks = [items[i : i + CHUNK] for i in range(0, len(items), CHUNK)]
    index_rows: list[tuple[int, int, int]] = []
    kept_paths: list[str] = []
    problems: list[tuple[str, str]] = []
    stats = PixelStats.empty((size, size, 3)) if with_stats else None
    offset = 0
    args = [(c, size, quality, max_pixels, with_stats) for c in chunks]
    bar = progress_bar(len(items), f"prepare {name}", enabled=progress)
    pool = get_context("fork").Pool(workers, initializer=_worker_init) if workers > 1 else None
    try:
        results = pool.imap(_process_chunk, args) if pool else map(_process_chunk, args)
        with atomic_path(dst / f"{name}.jpg") as blob_tmp, open(blob_tmp, "wb") as f:
            for chunk, res in zip(chunks, results, strict=True):
                for blob, label in zip(res["blobs"], res["labels"], strict=True):
                    f.write(blob)
                    index_rows.append((offset, len(blob), label))
                    offset += len(blob)
                kept_paths.extend(res["paths"])
                problems.extend(res["problems"])
                if stats is not None and res["stats"] is not None:
                    stats.merge(res["stats"])
                bar.update(len(chunk))
                bar.set_postfix(skipped=len(problems), MB=f"{offset / 1e6:.0f}")
    finally:
        bar.close()
        if pool:
            pool.terminate()
            pool.join()
    write_text(dst / f"{name}.paths.txt", "".join(p.replace("\n", " ") + "\n" for p in kept_paths))
    _save_npy(dst / f"{name}.index.npy", np.array(index_rows, dtype=INDEX_DTYPE))
    return SplitResult(len(index_rows), offset, problems, stats)


def _write_array_split(
    images: np.ndarray, labels: np.ndarray, name: str, dst: Path, with_stats: bool
) -> SplitResult:
    stats = PixelStats.empty(images.shape[1:]) if with_stats else None
    if stats is not None:
        for i in range(0, len(images), 5000):
            stats.add(images[i : i + 5000])
    _save_npy(dst / f"{name}.images.npy", np.ascontiguousarray(images, dtype=np.uint8))
    _save_npy(dst / f"{name}.labels.npy", labels.astype(np.int64))
    return SplitResult(len(labels), images.nbytes, [], stats)


def _split_done(dst: Path, name: str, kind: str) -> bool:
    final = f"{name}.index.npy" if kind == "jpeg" else f"{name}.labels.npy"
    return (dst / final).is_file()


def _clean_partial(dst: Path) -> list[str]:
    removed = []
    for p in dst.iterdir():
        if ".tmp" in p.name:
            p.unlink()
            removed.append(p.name)
    return removed


def _pca_with_channels(stats: PixelStats) -> tuple[list[float], list[list[float]]]:
    vals, vecs = stats.pca()
    return vals.tolist(), vecs.tolist()


def prepare(
    src: str,
    dst: str | Path,
    *,
    kind: str = "auto",
    workers: int | None = None,
    size: int = 256,
    quality: int = 90,
    val_fraction: float = 0.1,
    seed: int = 0,
    val_labels: str | None = None,
    max_pixels: int | None = None,
    force: bool = False,
    download: bool = True,
    progress: bool = True,
) -> dict[str, Any]:
    """Prepare ``src`` into ``dst``; returns the summary (also printed by the CLI)."""
    if not 1 <= quality <= 100:
        raise DataError(f"--quality must be in 1..100, got {quality}")
    dst = Path(dst)
    if (dst / "meta.json").is_file() and not force:
        meta = json.loads((dst / "meta.json").read_text())
        return {
            "dst": str(dst),
            "already_prepared": True,
            "splits": meta["splits"],
            "skipped": meta.get("skipped", 0),
        }
    t0 = time.time()
    source: Source = open_source(
        src, kind, val_fraction, seed, Path(val_labels) if val_labels else None, download
    )
    dst.mkdir(parents=True, exist_ok=True)
    if force:
        for p in dst.iterdir():
            if p.is_file():
                p.unlink()
    removed = _clean_partial(dst)
    fmt = "raw" if isinstance(source, ArraySource) else "jpeg"
    workers = workers or max(1, os.cpu_count() or 1)
    problems: list[tuple[str, str]] = list(getattr(source, "problems", []))
    splits: dict[str, dict[str, Any]] = {}
    stats_path = dst / "train.stats.npz"
    stats: PixelStats | None = None
    names = ["train", "val"]
    for name in names:
        if isinstance(source, ArraySource):
            if name not in source.images:
                continue
            labels = source.labels[name]
            n_classes = len(source.classes)
        else:
            if name not in source.splits:
                continue
            labels = np.asarray(source.splits[name].labels)
            n_classes = len(source.classes)
        with_stats = name == "train"
        if _split_done(dst, name, fmt) and (not with_stats or stats_path.is_file()):
            if with_stats:
                stats = PixelStats.load(stats_path)
            idx_count = len(
                np.load(dst / (f"{name}.index.npy" if fmt == "jpeg" else f"{name}.labels.npy"))
            )
            splits[name] = {"count": idx_count, "resumed": True}
            continue
        if isinstance(source, ArraySource):
            res = _write_array_split(source.images[name], labels, name, dst, with_stats)
            split_labels = labels
        else:
            res = _write_file_split(
                source.splits[name],
                name,
                dst,
                size,
                quality,
                workers,
                max_pixels,
                with_stats,
                progress,
            )
            split_labels = np.load(dst / f"{name}.index.npy")["label"]
        problems.extend(res.problems)
        if res.stats is not None:
            stats = res.stats
            stats.save(stats_path)
        splits[name] = {
            "count": res.count,
            "bytes": res.bytes,
            "class_counts": class_counts(split_labels, n_classes),
        }
    if stats is None or stats.count == 0:
        raise DataError(f"no usable training images in {src}; see {dst / 'report.csv'}")
    _write_report(dst / "report.csv", problems)
    np_mean = stats.mean_image()
    _save_npy(dst / "mean.npy", np_mean)
    eigenvalues, eigenvectors = _pca_with_channels(stats)
    image_size = list(np_mean.shape)
    meta = {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "kind": fmt,
        "source": {
            "path": str(source.root),
            "kind": source.kind,
            "seed": seed,
            "val_fraction": val_fraction,
        },
        "classes": source.classes,
        "names": source.names,
        "image_size": image_size,
        "jpeg_quality": quality if fmt == "jpeg" else None,
        "splits": splits,
        "pixel_mean": (stats.pixel_sum / max(stats.pixels, 1) * 255).tolist(),
        "pca": {
            "eigenvalues": eigenvalues,
            "eigenvectors": eigenvectors,
            "units": "pixel values in [0, 1]",
        },
        "skipped": len([p for p in problems if "kept" not in p[1]]),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    write_json(dst / "meta.json", meta, indent=1)
    elapsed = time.time() - t0
    written = sum(s["count"] for s in splits.values())
    return {
        "dst": str(dst),
        "already_prepared": False,
        "splits": splits,
        "written": written,
        "skipped": meta["skipped"],
        "problems": len(problems),
        "bytes": sum(s.get("bytes", 0) for s in splits.values()),
        "seconds": elapsed,
        "images_per_s": written / elapsed if elapsed > 0 else None,
        "removed_partial": removed,
        "report": str(dst / "report.csv"),
    }


def _write_report(path: Path, problems: list[tuple[str, str]]) -> None:
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "reason"])
        w.writerows(problems)


def format_summary(s: dict[str, Any]) -> str:
    if s.get("already_prepared"):
        counts = ", ".join(f"{k} {v['count']:,}" for k, v in s["splits"].items())
        return f"{s['dst']} is already prepared ({counts}); pass --force to rebuild"
    lines = [
        f"prepared {s['dst']}: "
        + ", ".join(f"{k} {v['count']:,} images" for k, v in s["splits"].items())
    ]
    lines.append(
        f"written {s['written']:,}, skipped {s['skipped']:,}, {s['bytes'] / 1e6:,.1f} MB, "
        f"{s['seconds']:.1f} s ({s['images_per_s'] or 0:,.0f} images/s)"
    )
    if s["problems"]:
        lines.append(f"{s['problems']} files skipped or worth a look: see {s['report']}")
    if s["removed_partial"]:
        lines.append(
            f"removed half-written files from an interrupted run: {', '.join(s['removed_partial'])}"
        )
    return "\n".join(lines)
