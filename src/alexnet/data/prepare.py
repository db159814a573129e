"""``alexnet prepare SRC DST``: the paper's preprocessing, done once (§2).

Image datasets: shorter side to 256, central 256x256 crop, stored as JPEG (quality 90 by
default) with an offsets/labels index. Small datasets (CIFAR-10, Fashion-MNIST) keep their
native size as raw uint8 arrays. Either way ``mean.npy`` holds the per-pixel mean image of
the training split and ``meta.json`` the RGB covariance's eigenvalues/eigenvectors, both
accumulated streaming in float64.

Small images (both sides <= 64 px in a sample of the files, or ``size="native"``) keep
their native size as raw arrays too, like the built-in CIFAR-10.

Interrupt-safe: ``.alexnet-prepare.json`` (SRC and the options) is written first, every
file under a temporary name renamed when complete, ``meta.json`` last. A rerun with the
same SRC and options keeps a finished split (with its statistics in ``train.stats.npz``)
and removes and rebuilds anything half-written; other options are refused unless
``force``. Only prepare's own outputs are ever deleted.
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import re
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np

from ..atomic import atomic_path, text_output, write_json, write_text
from ..interrupts import check as check_interrupt
from ..progress import bar as progress_bar
from .dataset import FORMAT, FORMAT_VERSION, INDEX_DTYPE
from .images import GRAYSCALE_MODES, ImageError, encode_jpeg, load_image, probe, resize_to
from .sources import (
    ArraySource,
    DataError,
    FileSource,
    FileSplit,
    Source,
    class_counts,
    open_source,
)

CHUNK = 32
DEFAULT_SIZE = 256  # §2
SMALL_SIDE = 64  # images no larger than this on both sides keep their native size
SAMPLE = 64  # files whose headers decide that
MARKER = ".alexnet-prepare.json"
SPLITS = ("train", "val")
# Every file prepare writes; the only names it ever deletes (and their temporary names).
OUTPUTS = (
    *(f"{n}.{ext}" for n in SPLITS for ext in ("jpg", "index.npy", "paths.txt", "images.npy",
                                                "labels.npy")),
    "train.stats.npz", "mean.npy", "report.csv", "meta.json", MARKER,
)  # fmt: skip
# atomic.atomic_path's temporary names: .<stem>.<pid>.tmp<suffix>
_TEMP_NAME = re.compile(
    "|".join(
        re.escape(f".{Path(n).stem}.") + r"\d+" + re.escape(f".tmp{Path(n).suffix}")
        for n in OUTPUTS
    )
)
OPTION_FLAGS = {
    "src": "SRC", "kind": "--kind", "size": "--size", "quality": "--quality",
    "val_fraction": "--val-fraction", "seed": "--seed", "val_labels": "--val-labels",
    "max_pixels": "--max-pixels",
}  # fmt: skip


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


def _decode_native_chunk(args: tuple[list[tuple[str, int]], int | None, int]) -> dict[str, Any]:
    items, max_pixels, channels = args
    images, labels, paths, problems = [], [], [], []
    for path, label in items:
        try:
            images.append(load_image(path, None, max_pixels, channels))
        except ImageError as err:
            problems.append((path, str(err)))
            continue
        labels.append(label)
        paths.append(path)
    return {"images": images, "labels": labels, "paths": paths, "problems": problems}


def _worker_init() -> None:
    # The parent handles interrupts. pool.terminate() stops workers with SIGTERM, which
    # must end them at once: the CLI's SIGTERM handler (raise KeyboardInterrupt), copied by
    # fork, would raise inside the task queue's lock and can hang the pool's shutdown.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    # Forked with both blocked (_fork_pool): a SIGTERM that came before this point is
    # pending, and now ends the worker.
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _POOL_SIGNALS)
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


_POOL_SIGNALS = {signal.SIGINT, signal.SIGTERM}


def _fork_pool(workers: int) -> Any:
    """A fork pool whose workers start with SIGINT and SIGTERM blocked until _worker_init
    has set their dispositions. Otherwise a worker terminated before its initializer ran
    would run this process's Python handler instead of dying, and pool.terminate() would
    wait on it forever (seen when a split failed right after the pool started). Signals
    arriving here meanwhile stay pending and are handled when the mask is restored."""
    old = signal.pthread_sigmask(signal.SIG_BLOCK, _POOL_SIGNALS)
    try:
        return get_context("fork").Pool(workers, initializer=_worker_init)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


@contextlib.contextmanager
def _chunk_results(
    fn: Callable[[Any], dict[str, Any]], args: list[Any], workers: int
) -> Iterator[Iterator[dict[str, Any]]]:
    """``fn`` over ``args`` in order, in ``workers`` forked processes (or here for one)."""
    pool = _fork_pool(workers) if workers > 1 else None
    try:
        yield pool.imap(fn, args) if pool else map(fn, args)
    finally:
        if pool:
            _end_pool(pool)


def _end_pool(pool: Any) -> None:
    """``pool.terminate()``, but never forever. A worker killed from outside (SIGTERM to
    the whole process group: ``timeout``, ``docker stop``, systemd) can die holding the
    task queue's lock, which terminate() then waits for; the workers are killed instead."""
    workers = list(pool._pool)  # private, but the only handle on the processes
    ender = threading.Thread(target=pool.terminate, daemon=True)
    ender.start()
    ender.join(3)  # it takes well under a second; killing workers a little early is harmless
    if ender.is_alive():
        for p in {*workers, *pool._pool}:  # with any the pool started meanwhile
            p.kill()
            p.join(5)
    else:
        pool.join()


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
    try:
        with (
            _chunk_results(_process_chunk, args, workers) as results,
            atomic_path(dst / f"{name}.jpg") as blob_tmp,
            open(blob_tmp, "wb") as f,
        ):
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
                check_interrupt()
    finally:
        bar.close()
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


def _write_native_split(
    split: FileSplit, name: str, dst: Path, shape: tuple[int, int] | None, channels: int,
    workers: int, max_pixels: int | None, with_stats: bool, progress: bool,
) -> tuple[SplitResult, tuple[int, int]]:  # fmt: skip
    """Small images at their native size, as raw arrays; images of another size than
    ``shape`` (default: the split's most common size) are resized to it and reported."""
    items = [(str(p), int(y)) for p, y in zip(split.paths, split.labels, strict=True)]
    chunks = [items[i : i + CHUNK] for i in range(0, len(items), CHUNK)]
    images: list[np.ndarray] = []
    labels: list[int] = []
    paths: list[str] = []
    problems: list[tuple[str, str]] = []
    bar = progress_bar(len(items), f"prepare {name}", enabled=progress)
    try:
        args = [(c, max_pixels, channels) for c in chunks]
        with _chunk_results(_decode_native_chunk, args, workers) as results:
            for chunk, res in zip(chunks, results, strict=True):
                images += res["images"]
                labels += res["labels"]
                paths += res["paths"]
                problems += res["problems"]
                bar.update(len(chunk))
                check_interrupt()
    finally:
        bar.close()
    if shape is None:
        sizes = Counter(img.shape[:2] for img in images)
        shape = sizes.most_common(1)[0][0] if sizes else (1, 1)
    for i, img in enumerate(images):
        if img.shape[:2] != shape:
            problems.append((paths[i], f"{img.shape[1]}x{img.shape[0]} px, not the most common "
                             f"{shape[1]}x{shape[0]}: resized to it (kept)"))  # fmt: skip
            images[i] = resize_to(img, shape)
    stacked = np.stack(images) if images else np.zeros((0, *shape, channels), np.uint8)
    res = _write_array_split(stacked, np.asarray(labels, np.int64), name, dst, with_stats)
    write_text(dst / f"{name}.paths.txt", "".join(p.replace("\n", " ") + "\n" for p in paths))
    return SplitResult(res.count, res.bytes, problems, res.stats), shape


def _native_plan(source: FileSource, size: int | str | None) -> tuple[bool, int]:
    """(store at native size, channels): native when asked, or when the default size is
    asked and every sampled file has both sides <= SMALL_SIDE; one channel when all are
    grayscale."""
    if size not in (None, "native"):  # an explicit size is what the user asked for
        return False, 3
    files = [p for split in source.splits.values() for p in split.paths]
    sample = files[:: max(1, len(files) // SAMPLE)][:SAMPLE]
    heads = [h for h in map(probe, sample) if h is not None]
    small = bool(heads) and all(w <= SMALL_SIDE and h <= SMALL_SIDE for w, h, _ in heads)
    gray = bool(heads) and all(mode in GRAYSCALE_MODES for _, _, mode in heads)
    return size == "native" or small, 1 if gray else 3


def _split_done(dst: Path, name: str, kind: str) -> list[tuple[str, str, str]] | None:
    """A split finished by an earlier run: its report rows, or None. A split counts as
    finished once the marker lists it, which happens after every one of its files and its
    report rows are written (markers of older versions list none: the final file counts)."""
    final = f"{name}.index.npy" if kind == "jpeg" else f"{name}.labels.npy"
    if not (dst / final).is_file():
        return None
    record = _read_marker(dst)
    if "done" not in record:
        return [row for row in _read_report(dst / "report.csv") if row[0] == name]
    rows = record["done"].get(name)
    return None if rows is None else [(name, p, r) for p, r in rows]


def _read_marker(dst: Path) -> dict[str, Any]:
    try:
        return json.loads((dst / MARKER).read_text())
    except (OSError, ValueError):
        return {}


def _mark_done(dst: Path, name: str, rows: list[tuple[str, str, str]]) -> None:
    record = _read_marker(dst)
    record.setdefault("done", {})[name] = [[p, r] for _, p, r in rows]
    write_json(dst / MARKER, record, indent=1)


def _clean_partial(dst: Path) -> list[str]:
    """Remove the temporary files of an interrupted run (only the names prepare writes)."""
    removed = []
    for p in sorted(dst.iterdir()):
        if p.is_file() and _TEMP_NAME.fullmatch(p.name):
            p.unlink()
            removed.append(p.name)
    return removed


def _remove_outputs(dst: Path) -> None:
    """``--force``: delete what an earlier prepare wrote here, and nothing else."""
    for n in OUTPUTS:
        (dst / n).unlink(missing_ok=True)
    _clean_partial(dst)


def _options(src: str, kind: str, size: int | str | None, quality: int, val_fraction: float,
             seed: int, val_labels: str | None, max_pixels: int | None) -> dict[str, Any]:  # fmt: skip
    """What the prepared data depends on (not --workers: the output is the same)."""
    named = src in ("fashion-mnist", "cifar10")
    return {
        "src": src if named else str(Path(src).resolve()),
        "kind": kind,
        # None is not 256: it lets small images keep their native size (see _native_plan)
        "size": "default" if size is None else size,
        "quality": quality,
        "val_fraction": val_fraction,
        "seed": seed,
        "val_labels": str(Path(val_labels).resolve()) if val_labels else None,
        "max_pixels": max_pixels,
    }


def _recorded_options(dst: Path) -> tuple[dict[str, Any] | None, set[str]]:
    """The options ``dst`` was built with, and those that did not matter for its source."""
    for path in (dst / MARKER, dst / "meta.json"):
        if path.is_file():
            try:
                record = json.loads(path.read_text())
            except (OSError, ValueError):
                present = ", ".join(n for n in OUTPUTS if (dst / n).exists())
                raise DataError(
                    f"{path} is unreadable; pass --force to rebuild {dst} (replacing its "
                    f"{present}), or choose another DST"
                ) from None
            return record.get("options"), set(record.get("unused_options", []))
    return None, set()


def _unused_options(source: Source, fmt: str) -> list[str]:
    """--val-fraction and --seed only choose a held-out val split; a source with its own
    (a val/test folder, CIFAR-10's test batch) ignores them, so reruns may differ there.
    --quality only matters for JPEG storage, not raw arrays."""
    held_out = isinstance(source, FileSource) and any(
        "--val-fraction" in line for line in source.layout
    )
    return ([] if held_out else ["val_fraction", "seed"]) + (["quality"] if fmt == "raw" else [])


def _shown(value: Any) -> str:
    return "not given" if value is None else str(value)


def _check_dst(dst: Path, options: dict[str, Any]) -> None:
    """Refuse to mix this run's options with an earlier run's files in ``dst``."""
    recorded, unused = _recorded_options(dst)
    if recorded is not None:
        diffs = [
            f"{OPTION_FLAGS.get(k, k)} {_shown(recorded.get(k))} (this run: {_shown(v)})"
            for k, v in options.items()
            if recorded.get(k) != v and k not in unused
        ]
        if diffs:
            raise DataError(
                f"{dst} was prepared with other options: {', '.join(diffs)}; pass --force to "
                "rebuild it, or choose another DST"
            )
    elif not (dst / "meta.json").is_file():
        foreign = [n for n in OUTPUTS if (dst / n).exists()]
        if foreign:
            raise DataError(
                f"{dst} holds {', '.join(foreign)} but no {MARKER} saying which SRC and "
                "options made them; pass --force to replace them, or choose another DST"
            )


def _pca_with_channels(stats: PixelStats) -> tuple[list[float], list[list[float]]]:
    vals, vecs = stats.pca()
    return vals.tolist(), vecs.tolist()


def prepare(
    src: str,
    dst: str | Path,
    *,
    kind: str = "auto",
    workers: int | None = None,
    size: int | str | None = None,
    quality: int = 90,
    val_fraction: float = 0.1,
    seed: int = 0,
    val_labels: str | None = None,
    max_pixels: int | None = None,
    force: bool = False,
    download: bool = True,
    progress: bool = True,
) -> dict[str, Any]:
    """Prepare ``src`` into ``dst``; returns the summary (also printed by the CLI).

    ``size``: the side of the stored crops; None (256, §2) stores images whose sides are
    all <= 64 px at their native size instead, as does ``"native"`` for any images."""
    if not 1 <= quality <= 100:
        raise DataError(f"--quality must be in 1..100, got {quality}")
    if not 0 <= val_fraction < 1:
        raise DataError(f"--val-fraction must be in [0, 1), got {val_fraction}")
    if size != "native" and not (size is None or (isinstance(size, int) and size >= 1)):
        raise DataError(f"--size must be a positive number of pixels or 'native', got {size!r}")
    if max_pixels is not None and max_pixels < 1:
        raise DataError(f"--max-pixels must be a positive number of pixels, got {max_pixels}")
    dst = Path(dst)
    if dst.exists() and not dst.is_dir():
        raise DataError(f"DST {dst} is a file, not a directory; choose a new or existing folder")
    named = src in ("fashion-mnist", "cifar10")
    if not named and Path(src).is_dir() and dst.resolve().is_relative_to(Path(src).resolve()):
        raise DataError(
            f"DST {dst} is inside SRC {src}: its files would be read as images; choose a DST "
            "outside SRC"
        )
    options = _options(src, kind, size, quality, val_fraction, seed, val_labels, max_pixels)
    if dst.is_dir() and not force:
        _check_dst(dst, options)
        if (dst / "meta.json").is_file():
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
        _remove_outputs(dst)
    removed = _clean_partial(dst)
    native, channels = _native_plan(source, size) if isinstance(source, FileSource) else (False, 3)
    fmt = "raw" if isinstance(source, ArraySource) or native else "jpeg"
    if not (dst / MARKER).is_file():
        unused = _unused_options(source, fmt)
        write_json(
            dst / MARKER, {"format": FORMAT, "options": options, "unused_options": unused}, indent=1
        )
    native_shape: tuple[int, int] | None = None
    if native and (dst / "train.images.npy").is_file():
        native_shape = np.load(dst / "train.images.npy", mmap_mode="r").shape[1:3]
    workers = workers or max(1, os.cpu_count() or 1)
    # (split, path, reason); a resumed split's rows come from the marker (_split_done).
    problems: list[tuple[str, str, str]] = [
        ("scan", p, r) for p, r in getattr(source, "problems", [])
    ]
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
        finished = _split_done(dst, name, fmt)
        if finished is not None and (not with_stats or stats_path.is_file()):
            if with_stats:
                stats = PixelStats.load(stats_path)
            idx_count = len(
                np.load(dst / (f"{name}.index.npy" if fmt == "jpeg" else f"{name}.labels.npy"))
            )
            splits[name] = {"count": idx_count, "resumed": True}
            problems += finished
            continue
        if isinstance(source, ArraySource):
            res = _write_array_split(source.images[name], labels, name, dst, with_stats)
            split_labels = labels
        elif native:
            res, native_shape = _write_native_split(
                source.splits[name], name, dst, native_shape, channels, workers, max_pixels,
                with_stats, progress,
            )  # fmt: skip
            split_labels = np.load(dst / f"{name}.labels.npy")
        else:
            res = _write_file_split(
                source.splits[name],
                name,
                dst,
                size if isinstance(size, int) else DEFAULT_SIZE,
                quality,
                workers,
                max_pixels,
                with_stats,
                progress,
            )
            split_labels = np.load(dst / f"{name}.index.npy")["label"]
        rows = [(name, p, r) for p, r in res.problems]
        problems += rows
        _write_report(dst / "report.csv", problems)
        _mark_done(dst, name, rows)  # last: only now may a rerun keep this split
        if res.stats is not None:
            stats = res.stats
            stats.save(stats_path)
        splits[name] = {
            "count": res.count,
            "bytes": res.bytes,
            "class_counts": class_counts(split_labels, n_classes),
        }
        check_interrupt()  # this split is kept; a stop asked while saving it stops here
    _write_report(dst / "report.csv", problems)
    if stats is None or stats.count == 0:
        # Nothing usable: leave the report (and the marker, which lets a rerun write here),
        # not empty splits a rerun would keep.
        record = _read_marker(dst)
        record.pop("done", None)  # first: no split may be kept once its files go
        write_json(dst / MARKER, record, indent=1)
        for n in OUTPUTS:
            if n not in ("report.csv", MARKER):
                (dst / n).unlink(missing_ok=True)
        raise DataError(f"no usable training images in {src}; see {dst / 'report.csv'}")
    layout = list(getattr(source, "layout", []))
    warnings = []
    if len(source.classes) == 1:
        warnings.append(
            f"only one class ({source.classes[0]}): a classifier needs two or more; give the "
            "folder that holds the class folders as SRC"
        )
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
            "layout": layout,
        },
        "options": options,
        "unused_options": _unused_options(source, fmt),
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
        "skipped": len([p for p in problems if "kept" not in p[2]]),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    check_interrupt()  # meta.json says the data is complete: not after a stop was asked
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
        "kind": fmt,
        "image_size": image_size,
        "layout": layout,
        "warnings": warnings,
    }


def _write_report(path: Path, problems: list[tuple[str, str, str]]) -> None:
    with text_output(path, newline="") as f:
        w = csv.writer(f)
        w.writerow(["split", "path", "reason"])
        w.writerows(problems)


def _read_report(path: Path) -> list[tuple[str, str, str]]:
    """The rows of an earlier run's report.csv (none where absent or of the old format)."""
    try:
        with open(path, newline="", errors="surrogateescape") as f:
            return [(r["split"], r["path"], r["reason"]) for r in csv.DictReader(f)]
    except (OSError, KeyError, csv.Error):
        return []


def format_summary(s: dict[str, Any]) -> str:
    if s.get("already_prepared"):
        counts = ", ".join(f"{k} {v['count']:,}" for k, v in s["splits"].items())
        return f"{s['dst']} is already prepared ({counts}); pass --force to rebuild"
    lines = [
        f"prepared {s['dst']}: "
        + ", ".join(f"{k} {v['count']:,} images" for k, v in s["splits"].items())
    ]
    lines += s.get("layout", [])
    if s.get("image_size"):
        how = "raw uint8 arrays (native size)" if s["kind"] == "raw" else "JPEG crops"
        lines.append(f"stored as {how}: {'x'.join(map(str, s['image_size']))} each")
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
    lines += [f"warning: {w}" for w in s.get("warnings", [])]
    return "\n".join(lines)
