"""The prepared format, exact per-epoch sampling, and loaders that feed the device.

Prepared directory (written by ``alexnet prepare``; ``meta.json`` is written last, so a
directory without it is incomplete):

    meta.json            format, classes, names, counts, image size, PCA, source, skipped
    mean.npy             float32 (H, W, C): per-pixel mean of the training images, 0..255
    <split>.jpg          (image datasets) the JPEG bytes of every image, back to back
    <split>.index.npy    (image datasets) structured array: offset u8, length u4, label i4
    <split>.paths.txt    (image datasets) the source file of each image, one per line
    <split>.images.npy   (small datasets) uint8 (N, H, W, C), native size
    <split>.labels.npy   (small datasets) int64 (N,)
    report.csv           files that were skipped or looked wrong, with the reason

Any worker on any node reads any sample by index (memory-mapped), so an epoch is an exact
random permutation. Randomness (order, crop offsets, flips, PCA coefficients) is drawn per
epoch from ``(seed, epoch)`` for the whole dataset in the main process, then split by rank:
a batch is bitwise the same whatever the number of workers, and N ranks with batch B/N see
exactly what one process with batch B sees.
"""

from __future__ import annotations

import json
import signal
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..hardware import resolve_workers
from . import transforms as T
from .preprocess import InputTransform, Preprocessing
from .sources import DataError

FORMAT = "alexnet-prepared"
FORMAT_VERSION = 1
INDEX_DTYPE = np.dtype([("offset", "<u8"), ("length", "<u4"), ("label", "<i4")])


# --------------------------------------------------------------------------------------
# Reading the prepared format


class Prepared:
    """A prepared dataset directory; see the module docstring for its files."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        meta_path = self.root / "meta.json"
        if not self.root.is_dir():
            raise DataError(
                f"prepared data directory not found: {self.root} (create it with `alexnet prepare SRC {self.root}`)"
            )
        if not meta_path.is_file():
            raise DataError(
                f"{self.root} is not a prepared dataset (no meta.json). If it holds a "
                f"dataset's own files (class folders, CIFAR-10 or Fashion-MNIST files), "
                f"prepare them into a new directory, `alexnet prepare {self.root} DST`, and "
                f"pass DST; if an `alexnet prepare ... {self.root}` was interrupted, rerun it "
                f"(it resumes)"
            )
        meta = json.loads(meta_path.read_text())
        if meta.get("format") != FORMAT or meta.get("version") != FORMAT_VERSION:
            raise DataError(
                f"{meta_path}: not an {FORMAT} v{FORMAT_VERSION} directory; prepare it again"
            )
        self.meta: dict[str, Any] = meta
        self.kind: str = meta["kind"]  # "jpeg" | "raw"
        self.classes: list[str] = meta["classes"]
        self.names: list[str] = meta["names"]
        self.image_size: tuple[int, int, int] = tuple(meta["image_size"])  # type: ignore[assignment]
        self.mean = np.load(self.root / "mean.npy")  # (H, W, C) float32
        self.eigenvalues = np.asarray(meta["pca"]["eigenvalues"], dtype=np.float32)
        self.eigenvectors = np.asarray(meta["pca"]["eigenvectors"], dtype=np.float32)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def splits(self) -> list[str]:
        return list(self.meta["splits"])

    def ids(self, split: str) -> list[str]:
        """A name for every image of ``split``: its source path, or ``split:index``."""
        paths = self.root / f"{split}.paths.txt"
        if paths.is_file():
            return paths.read_text(errors="surrogateescape").splitlines()
        return [f"{split}:{i}" for i in range(len(self.split(split)))]

    def split(self, name: str) -> JpegSplit | RawSplit:
        if name not in self.meta["splits"]:
            raise DataError(f"{self.root} has no split {name!r}; it has {self.splits()}")
        return JpegSplit(self.root, name) if self.kind == "jpeg" else RawSplit(self.root, name)

    def preprocessing(
        self, crop: int, normalize: str = "mean_image", input_scale: float = 1.0
    ) -> Preprocessing:
        """This dataset's half of the preprocessing contract (image size, mean image, PCA,
        classes) with a run's ``data.*`` settings; saved with every checkpoint and export."""
        return Preprocessing(
            image_size=self.image_size, crop=crop, normalize=normalize, input_scale=input_scale,
            mean=self.mean, eigenvalues=self.eigenvalues, eigenvectors=self.eigenvectors,
            classes=tuple(self.classes), names=tuple(self.names),
        )  # fmt: skip


class JpegSplit:
    def __init__(self, root: Path, name: str) -> None:
        self.name = name
        self.index = np.load(root / f"{name}.index.npy")
        self.blob_path = root / f"{name}.jpg"
        self._blob: np.ndarray | None = None  # opened lazily: memmaps do not cross fork well

    def __len__(self) -> int:
        return len(self.index)

    @property
    def labels(self) -> np.ndarray:
        return self.index["label"].astype(np.int64)

    def _data(self) -> np.ndarray:
        if self._blob is None:
            self._blob = np.memmap(self.blob_path, dtype=np.uint8, mode="r")
        return self._blob

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_blob": None}

    def jpeg_bytes(self, i: int) -> bytes:
        rec = self.index[i]
        start = int(rec["offset"])
        return self._data()[start : start + int(rec["length"])].tobytes()

    def image(self, i: int, buffer: np.ndarray | None = None) -> np.ndarray:
        return decode_jpeg(self.jpeg_bytes(i), buffer)


class RawSplit:
    def __init__(self, root: Path, name: str) -> None:
        self.name = name
        self.images = np.load(root / f"{name}.images.npy", mmap_mode="r")
        self.labels = np.load(root / f"{name}.labels.npy")

    def __len__(self) -> int:
        return len(self.labels)

    def image(self, i: int) -> np.ndarray:
        return np.asarray(self.images[i])


def decode_jpeg(data: bytes, buffer: np.ndarray | None = None) -> np.ndarray:
    """JPEG bytes -> (H, W, 3) uint8, into ``buffer`` when given and large enough.

    simplejpeg (libjpeg-turbo) decodes 256 px crops ~2.4x faster than PIL here
    (benchmarks/README.md)."""
    import simplejpeg

    if buffer is not None:
        h, w, _, _ = simplejpeg.decode_jpeg_header(data)
        if buffer.shape == (h, w, 3):
            return simplejpeg.decode_jpeg(data, colorspace="RGB", buffer=buffer)
    return simplejpeg.decode_jpeg(data, colorspace="RGB")


# --------------------------------------------------------------------------------------
# Sampling


@dataclass
class BatchPlan:
    """One batch: sample indices and each sample's augmentation draws."""

    indices: np.ndarray  # (B,) int64
    ys: np.ndarray  # crop top offsets
    xs: np.ndarray  # crop left offsets
    flips: np.ndarray  # bool
    alphas: np.ndarray  # (B, 3) float32, PCA coefficients ~ N(0, pca_std)
    # (B, 2) float32 in [0, 1): cutout centres (row, column) as fractions of the crop side;
    # zeros when cutout is off (then nothing is drawn for them).
    cuts: np.ndarray


class EpochSampler:
    """Exact per-epoch permutations from ``(seed, epoch)``, split disjointly across ranks.

    Rank r of W takes positions r, r+W, r+2W, ... of the epoch's permutation, in batches of
    ``batch_size`` (the per-rank batch). Every draw is made for the whole permutation, so
    the union of the ranks' batch k is the single-process batch k at batch W x batch_size.
    ``drop_last`` drops the incomplete final batch (training); without it every sample is
    visited exactly once (evaluation).
    """

    def __init__(
        self,
        n: int,
        batch_size: int,
        *,
        seed: int = 0,
        shuffle: bool = True,
        drop_last: bool = True,
        rank: int = 0,
        world_size: int = 1,
        crop_range: tuple[int, int] = (0, 0),
        flip: bool = False,
        pca_std: float = 0.0,
        cutout: bool = False,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside world size {world_size}")
        self.n, self.batch_size, self.seed, self.shuffle = n, batch_size, seed, shuffle
        self.drop_last, self.rank, self.world_size = drop_last, rank, world_size
        self.crop_range, self.flip, self.pca_std = crop_range, flip, pca_std
        self.cutout = cutout
        self.epoch, self.start_batch = 0, 0
        self.subset: np.ndarray | None = None  # dataset indices in use (see limit)

    def limit(self, n: int) -> None:
        """Use a fixed random ``n`` of the split (seeded by ``seed``) rather than all of it;
        not its first ``n``, which a prepared split stores sorted by class."""
        if 0 < n < self.n:
            keep = np.random.default_rng([self.seed, 2**31 - 1]).choice(self.n, n, replace=False)
            self.subset, self.n = np.sort(keep), n

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.epoch, self.start_batch = epoch, start_batch

    def _per_rank(self) -> int:
        # Every rank gets the same number of samples (the first n // W * W positions) when
        # dropping; otherwise ranks differ by at most one sample and nothing is repeated.
        if self.drop_last:
            return self.n // self.world_size
        return len(range(self.rank, self.n, self.world_size))

    def __len__(self) -> int:
        per = self._per_rank()
        return per // self.batch_size if self.drop_last else -(-per // self.batch_size)

    def plan(self) -> list[BatchPlan]:
        g = np.random.default_rng([self.seed, self.epoch])
        order = g.permutation(self.n) if self.shuffle else np.arange(self.n)
        if self.subset is not None:
            order = self.subset[order]
        ys = g.integers(0, self.crop_range[0] + 1, self.n)
        xs = g.integers(0, self.crop_range[1] + 1, self.n)
        flips = g.random(self.n) < 0.5 if self.flip else np.zeros(self.n, dtype=bool)
        alphas = (g.standard_normal((self.n, 3)) * self.pca_std).astype(np.float32)
        # Drawn last, and only when used: runs without cutout keep every earlier draw.
        cuts = (
            g.random((self.n, 2), dtype=np.float32)
            if self.cutout
            else np.zeros((self.n, 2), np.float32)
        )
        pos = np.arange(self.rank, self.n, self.world_size)[: self._per_rank()]
        batches = []
        for b in range(len(self)):
            p = pos[b * self.batch_size : (b + 1) * self.batch_size]
            batches.append(BatchPlan(order[p], ys[p], xs[p], flips[p], alphas[p], cuts[p]))
        return batches[self.start_batch :]

    def __iter__(self) -> Iterator[BatchPlan]:
        return iter(self.plan())


# --------------------------------------------------------------------------------------
# Loading uint8 batches


class JpegBatches(torch.utils.data.Dataset):
    """Decodes a :class:`BatchPlan` of a JPEG split into one uint8 batch (in a worker).

    mode "train": crop ``crop`` x ``crop`` at the plan's offsets and mirror where flipped.
    mode "center": the central crop. mode "full": the whole stored image (for 10-crop).
    """

    def __init__(self, split: JpegSplit, crop: int, mode: str = "train", raw: bool = False) -> None:
        self.split, self.crop, self.mode, self.raw = split, crop, mode, raw

    def __len__(self) -> int:
        return len(self.split)

    def _plan_tensors(self, plan: BatchPlan) -> dict[str, Tensor]:
        return {
            "labels": torch.from_numpy(self.split.labels[plan.indices]),
            "indices": torch.from_numpy(plan.indices),
            "ys": torch.from_numpy(plan.ys),
            "xs": torch.from_numpy(plan.xs),
            "flips": torch.from_numpy(plan.flips),
            "alphas": torch.from_numpy(plan.alphas),
            "cuts": torch.from_numpy(plan.cuts),
        }

    def __getitem__(self, plan: BatchPlan) -> dict[str, Any]:  # type: ignore[override]
        if self.raw:  # the JPEG files alone: the device decodes, crops and mirrors them
            files = [self.split.jpeg_bytes(int(i)) for i in plan.indices]
            # One tensor for the batch (one shared-memory handle, not one per file).
            joined = bytearray(b"".join(files))
            jpegs = (
                torch.frombuffer(joined, dtype=torch.uint8)
                if joined
                else torch.empty(0, dtype=torch.uint8)
            )
            lengths = torch.tensor([len(f) for f in files], dtype=torch.int64)
            return {"jpegs": jpegs, "jpeg_lengths": lengths, **self._plan_tensors(plan)}
        c = self.crop
        first = (
            self.split.image(int(plan.indices[0]))
            if len(plan.indices)
            else np.zeros((c, c, 3), np.uint8)
        )
        side = first.shape[:2] if self.mode == "full" else (c, c)
        out = torch.empty((len(plan.indices), *side, first.shape[2]), dtype=torch.uint8)
        scratch = np.empty_like(first)  # one decode buffer for the whole batch
        for k, (i, y, x, f) in enumerate(
            zip(plan.indices, plan.ys, plan.xs, plan.flips, strict=True)
        ):
            img = torch.from_numpy(first if k == 0 else self.split.image(int(i), scratch))
            if self.mode == "train":
                img = img[y : y + c, x : x + c]
                if f:
                    img = img.flip(1)  # torch's flip of HWC uint8 is ~7x numpy's here
            elif self.mode == "center":
                top, left = (img.shape[0] - c) // 2, (img.shape[1] - c) // 2
                img = img[top : top + c, left : left + c]
            out[k].copy_(img)
        return {"images": out, **self._plan_tensors(plan)}  # images: (B, H, W, C) uint8


# Ctrl-C, and the SIGTERM of `timeout`, `docker stop` or a scheduler's preemption, reach
# the whole process group: the main process decides (it checkpoints, then stops the workers
# with its own shutdown message), so a loader worker must not die of them mid-batch. Its
# parent's DataLoader would otherwise abort on the dead worker, before any checkpoint.
_WORKER_SIGNALS = {signal.SIGINT, signal.SIGTERM}


def _worker_init(_: int) -> None:
    torch.set_num_threads(1)
    for sig in _WORKER_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
    # Started with both blocked (_start_workers): one sent meanwhile is pending, and now
    # discarded.
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _WORKER_SIGNALS)


def _start_workers(loader: torch.utils.data.DataLoader) -> Iterator[Any]:
    """``iter(loader)``, its workers started with SIGINT and SIGTERM blocked until
    _worker_init ignores them: before that, torch's SIGTERM handler in a worker would end it
    on a group-wide SIGTERM. Signals for this process stay pending meanwhile."""
    old = signal.pthread_sigmask(signal.SIG_BLOCK, _WORKER_SIGNALS)
    try:
        return iter(loader)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


@dataclass
class LoaderSpec:
    """What the sampler draws for one split; how images become inputs is the model's
    :class:`~alexnet.data.preprocess.Preprocessing`."""

    train: bool  # random crops + flips + PCA, or deterministic views
    flip: bool = True
    pca_std: float = 0.1  # §4.1; 0 disables PCA noise
    pad: int = 0  # small images: zero padding before the random crop
    cutout: int = 0  # training: side of the square set to the mean (0 = off)
    views: str = "center"  # evaluation: "center" | "ten-crop"


class DeviceLoader:
    """Iterates (inputs, labels) on ``device``: uint8 batches moved with pinned memory and
    non_blocking, then turned into inputs on the device by the preprocessing's
    :class:`~alexnet.data.preprocess.InputTransform` (mean subtraction, PCA noise, views).

    For evaluation with ``views == "ten-crop"`` inputs are (10, N, C, S, S).
    """

    def __init__(
        self,
        data: Prepared,
        split: str,
        spec: LoaderSpec,
        sampler: EpochSampler,
        device: torch.device,
        prep: Preprocessing,
        workers: int = 2,
        dtype: torch.dtype = torch.float32,
        ensemble: list[Preprocessing] | None = None,
        decode: str = "cpu",
    ) -> None:
        self.data, self.spec, self.sampler, self.device = data, spec, sampler, device
        if decode not in ("cpu", "cuda"):
            raise ValueError(f"decode must be cpu or cuda, got {decode!r}")
        self.split = data.split(split)
        h, w, _ = data.image_size
        for p in [prep, *(ensemble or [])]:
            p.check_data(data.image_size, None, f"{data.root} ({split})")
        self.prep, self.transform = prep, InputTransform(prep, device, dtype)
        # Evaluation of an ensemble: every model's inputs from its own preprocessing (mean
        # image, scale, normalisation), cut from the same decoded images.
        self.ensemble = [InputTransform(p, device, dtype) for p in ensemble or []]
        if self.ensemble and spec.train:
            raise ValueError("per-model preprocessing is for evaluation only")
        if spec.train and (spec.cutout > 0) != sampler.cutout:
            raise ValueError("spec.cutout needs a sampler that draws cutout centres (cutout=True)")
        crop = prep.crop
        if crop > min(h, w) + 2 * spec.pad:
            raise DataError(
                f"the model's input side {crop} is larger than the prepared images ({h}x{w}) "
                f"in {data.root}"
            )
        self.array_images: Tensor | None = None
        self.loader: torch.utils.data.DataLoader | None = None
        if isinstance(self.split, RawSplit):
            # Small datasets live on the device whole (NHWC); batches are index gathers.
            self.array_images = torch.from_numpy(np.array(self.split.images)).to(device)
            self.array_labels = torch.from_numpy(self.split.labels).to(device)
        else:
            mode = "train" if spec.train else ("full" if spec.views == "ten-crop" else "center")
            if spec.train and spec.pad:  # padded crops are cut on the device, as for arrays
                mode = "full"
            self.mode, self.on_device = mode, decode == "cuda"
            self._stream: Any = None  # the decoder's side stream (CUDA)
            self.loader = torch.utils.data.DataLoader(
                JpegBatches(self.split, crop, mode, raw=self.on_device),
                sampler=sampler,
                batch_size=None,
                num_workers=workers,
                pin_memory=device.type == "cuda",
                persistent_workers=workers > 0,
                prefetch_factor=4 if workers > 0 else None,
                worker_init_fn=_worker_init if workers > 0 else None,
                # Its own generator: starting an epoch's iterator must not draw from torch's
                # global RNG, or dropout after a mid-epoch resume would differ.
                generator=torch.Generator(),
            )

    def __len__(self) -> int:
        return len(self.sampler)

    @property
    def num_samples(self) -> int:
        return len(self.split)

    def _raw_batches(self) -> Iterator[dict[str, Tensor]]:
        assert self.array_images is not None
        for plan in self.sampler:
            idx = torch.from_numpy(plan.indices).to(self.device)
            yield {
                "images": self.array_images[idx],
                "labels": self.array_labels[idx],
                "indices": idx,
                "ys": torch.from_numpy(plan.ys),
                "xs": torch.from_numpy(plan.xs),
                "flips": torch.from_numpy(plan.flips),
                "alphas": torch.from_numpy(plan.alphas),
                "cuts": torch.from_numpy(plan.cuts),
            }

    def _decode_on_device(self, b: dict[str, Any]) -> dict[str, Any]:
        """nvJPEG: a batch of JPEG files -> (N, H, W, 3) uint8 on the device, cut as the
        CPU workers cut it (the training crop and mirror, the centre, or the whole image)."""
        import warnings

        from torchvision.io import ImageReadMode, decode_jpeg

        files = list(torch.split(b.pop("jpegs"), b.pop("jpeg_lengths").tolist()))
        with warnings.catch_warnings():  # torchvision >= 0.29 warns on every call
            warnings.simplefilter("ignore", DeprecationWarning)
            images = self._decode_jpegs(decode_jpeg, files, ImageReadMode.RGB)
        x = torch.stack(images).permute(0, 2, 3, 1)  # (N, 3, H, W) -> NHWC view
        if self.mode == "train":
            x = T.crop_batch(x, b["ys"], b["xs"], b["flips"], self.prep.crop)
        elif self.mode == "center":
            x = T.center_crop(x, self.prep.crop)
        return {**b, "images": x.contiguous()}

    def _decode_jpegs(self, decode: Any, files: list[Tensor], mode: Any) -> list[Tensor]:
        """torchvision's GPU decoder allocates its outputs on the current stream but writes
        them from its own stream without waiting for the current one: memory freed by a
        training step whose kernels are still queued could be overwritten (reported against
        torchvision on H100s). Here the outputs are allocated on a side stream that first
        waits for the training stream, and the training stream waits for the decode."""
        if self.device.type != "cuda":
            return decode(files, mode=mode, device=self.device)
        if self._stream is None:
            self._stream = torch.cuda.Stream(self.device)
        current = torch.cuda.current_stream(self.device)
        self._stream.wait_stream(current)
        with torch.cuda.stream(self._stream):
            images = decode(files, mode=mode, device=self.device)
        current.wait_stream(self._stream)
        for t in images:  # their memory returns to the pool only after the step used it
            t.record_stream(current)
        return images

    def _normalize(self, b: dict[str, Tensor]) -> Tensor:
        """uint8 NHWC batch -> float inputs: (N, C, S, S) channels_last, or (10, N, C, S, S)."""
        spec = self.spec
        if not spec.train:
            return self.transform(b["images"], spec.views)
        return self.transform.train(
            b["images"], b["ys"], b["xs"], b["flips"], b["alphas"], spec.pca_std, spec.pad,
            cropped=self.array_images is None and not spec.pad,
            cutout=spec.cutout, cuts=b["cuts"],
        )  # fmt: skip

    def batches(self) -> Iterator[dict[str, Tensor]]:
        """Normalised batches with their metadata: inputs, labels, indices."""
        if self.array_images is not None:
            source = self._raw_batches()
        else:
            assert self.loader is not None
            source = _start_workers(self.loader)
        for b in source:
            if "jpegs" in b:
                b = self._decode_on_device(b)
            out = {
                "inputs": self._normalize(b),
                "labels": b["labels"].to(self.device, non_blocking=True),
                "indices": b["indices"],
            }
            if self.ensemble:  # the first model's inputs, then each other model's
                out["model_inputs"] = [out["inputs"]] + [
                    t(b["images"], self.spec.views) for t in self.ensemble
                ]
            yield out

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        for b in self.batches():
            yield b["inputs"], b["labels"]


def make_loader(
    data: Prepared,
    split: str,
    spec: LoaderSpec,
    batch_size: int,
    device: torch.device,
    prep: Preprocessing,
    *,
    seed: int = 0,
    rank: int = 0,
    world_size: int = 1,
    workers: int | str = "auto",
    dtype: torch.dtype = torch.float32,
    ensemble: list[Preprocessing] | None = None,
    decode: str = "cpu",
) -> DeviceLoader:
    """A loader for ``split`` that turns its images into inputs as ``prep`` says (the
    training run's, or the loaded model's): random training draws or exact evaluation
    views. ``workers``: decoding processes for JPEG data, ``"auto"`` for one per spare core.
    ``ensemble``: the preprocessing of further models (evaluation), whose inputs each batch
    carries too (``model_inputs``). ``decode``: ``cpu`` (the workers decode) or ``cuda``
    (the workers read the files; torchvision decodes whole batches on ``device``: nvJPEG on
    a GPU)."""
    h, w, _ = data.image_size
    n = len(data.split(split))
    if spec.train:
        crop_range = (h + 2 * spec.pad - prep.crop, w + 2 * spec.pad - prep.crop)
        sampler = EpochSampler(
            n, batch_size, seed=seed, shuffle=True, drop_last=True, rank=rank, world_size=world_size,
            crop_range=crop_range, flip=spec.flip, pca_std=spec.pca_std, cutout=spec.cutout > 0,
        )  # fmt: skip
    else:
        sampler = EpochSampler(
            n,
            batch_size,
            seed=seed,
            shuffle=False,
            drop_last=False,
            rank=rank,
            world_size=world_size,
        )
    n_workers = resolve_workers(workers, accelerator=device.type != "cpu")
    return DeviceLoader(
        data, split, spec, sampler, device, prep, n_workers, dtype, ensemble, decode
    )
