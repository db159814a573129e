"""Small datasets the tests make themselves: real JPEG/PNG encodings, IDX and CIFAR files."""

from __future__ import annotations

import contextlib
import gzip
import io
import pickle
import struct
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image


def photo(w: int, h: int, seed: int, mode: str = "RGB") -> Image.Image:
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 255, (1, 1, 3)) + np.linspace(0, 60, w)[None, :, None]
    arr = np.clip(base + rng.normal(0, 20, (h, w, 3)), 0, 255).astype(np.uint8)
    return Image.fromarray(arr).convert(mode)


def make_folder_dataset(
    root: Path, classes: int = 3, per_class: int = 6, size: tuple[int, int] = (80, 60)
) -> Path:
    for c in range(classes):
        d = root / f"class_{c}"
        d.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            photo(*size, seed=c * 100 + i).save(d / f"img_{i}.jpg", quality=92)
    return root


def make_messy_dataset(root: Path) -> dict[str, str]:
    """One class folder per real-world problem; returns file -> expected outcome."""
    good = root / "good"
    good.mkdir(parents=True)
    for i in range(4):
        photo(300, 200, seed=i).save(good / f"ok_{i}.JPEG", quality=90)
    photo(120, 90, seed=10, mode="CMYK").save(good / "cmyk.JPEG", quality=90)
    photo(90, 120, seed=11, mode="L").save(good / "gray.JPEG", quality=90)
    photo(64, 64, seed=12).save(good / "png_named.JPEG", format="PNG")
    photo(40, 30, seed=13).save(good / "tiny.JPEG", quality=90)
    rgba = photo(70, 50, seed=14, mode="RGBA")
    rgba.save(good / "alpha.png")
    # EXIF orientation 6 (rotate 90 CW to display): stored 100x50 -> displayed 50x100.
    im = photo(100, 50, seed=15)
    exif = im.getexif()
    exif[0x0112] = 6
    im.save(good / "rotated.JPEG", exif=exif.tobytes(), quality=90)
    bad = root / "bad"
    bad.mkdir()
    buf = io.BytesIO()
    photo(200, 200, seed=20).save(buf, "JPEG", quality=90)
    (bad / "truncated.JPEG").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 3])
    (bad / "garbage.JPEG").write_bytes(b"this is not an image at all" * 10)
    (bad / "notes.txt").write_text("not an image")
    # A PNG header claiming 100000 x 100000 pixels: a decompression bomb.
    png = bytearray()
    png += b"\x89PNG\r\n\x1a\n"
    ihdr = struct.pack(">IIBBBBB", 100000, 100000, 8, 2, 0, 0, 0)
    import zlib

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (
            struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
        )

    png += chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")
    (bad / "bomb.JPEG").write_bytes(bytes(png))
    photo(100, 100, seed=21).save(bad / "fine.JPEG", quality=90)
    (root / "empty").mkdir()
    return {
        "truncated.JPEG": "corrupt",
        "garbage.JPEG": "not an image",
        "notes.txt": "not an image file",
        "bomb.JPEG": "decompression bomb",
    }


def write_idx(path: Path, array: np.ndarray) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def make_fashion_mnist(root: Path, n_train: int = 64, n_val: int = 32) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for prefix, n in (("train", n_train), ("t10k", n_val)):
        labels = np.arange(n) % 10
        images = (rng.integers(0, 60, (n, 28, 28)) + labels[:, None, None] * 19).astype(np.uint8)
        write_idx(root / f"{prefix}-images-idx3-ubyte.gz", images)
        write_idx(root / f"{prefix}-labels-idx1-ubyte.gz", labels)
    return root


def make_cifar10(root: Path, per_batch: int = 20) -> Path:
    d = root / "cifar-10-batches-py"
    d.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 255, (per_batch, 3072), dtype=np.uint8)
        labels = [int(v) for v in rng.integers(0, 10, per_batch)]
        with open(d / name, "wb") as f:
            pickle.dump({b"data": data, b"labels": labels}, f)
    return root


def make_split_folders(
    root: Path,
    splits: tuple[str, ...] = ("train", "test"),
    classes: int = 2,
    per_class: int = 4,
    size: tuple[int, int] = (32, 32),
) -> Path:
    """``root/<split>/class_<c>/img_<i>.jpg`` for each split name (e.g. Train, valid, test)."""
    for s, split in enumerate(splits):
        make_folder_dataset(root / split, classes, per_class, size)
        for c in range(classes):  # different pixels in each split
            for i in range(per_class):
                photo(*size, seed=10_000 * (s + 1) + c * 100 + i).save(
                    root / split / f"class_{c}" / f"img_{i}.jpg", quality=92
                )
    return root


SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def cifar10_jpeg_subset(dst: Path, train_per_class: int, test_per_class: int) -> Path | None:
    """``dst/train/<class>`` and ``dst/test/<class>`` with the first N real CIFAR-10 JPEGs
    of each class from the shared tarball; None where it is not on this machine."""
    import tarfile

    archive = SHARED_DATA / "cifar10-jpeg.tar.gz"
    if not archive.is_file():
        return None
    want = {"train": train_per_class, "test": test_per_class}
    counts: dict[tuple[str, str], int] = {}
    with tarfile.open(archive) as tar:
        for member in tar:
            parts = Path(member.name).parts  # cifar10-jpeg/<split>/<class>/<file>
            if not member.isfile() or len(parts) != 4 or parts[1] not in want:
                continue
            key = (parts[1], parts[2])
            if counts.get(key, 0) >= want[parts[1]]:
                continue
            out = dst / parts[1] / parts[2] / parts[3]
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_bytes(tar.extractfile(member).read())  # type: ignore[union-attr]
            counts[key] = counts.get(key, 0) + 1
    return dst


@contextlib.contextmanager
def tiny_filesystem(path: Path, size: str = "64k") -> Iterator[Path]:
    """A tmpfs of ``size`` mounted at ``path`` (a real full disk), or pytest.skip where this
    machine may not mount one (not Linux, not root)."""
    import subprocess
    import sys

    import pytest

    path.mkdir(parents=True, exist_ok=True)
    cmd = ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)]
    if sys.platform != "linux" or subprocess.run(cmd, capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here")
    try:
        yield path
    finally:
        subprocess.run(["umount", str(path)], check=False)
