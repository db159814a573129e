"""Decoding real-world image files into the uint8 arrays the pipeline stores (§2).

``alexnet prepare`` uses :func:`load_image` and :func:`encode_jpeg` for datasets;
``alexnet predict`` uses :func:`image_to_array` for single files, so a file is decoded
exactly as it would have been stored.
"""

from __future__ import annotations

import contextlib
import io
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError


class ImageError(Exception):
    """An input image that cannot be used; the message is the reason for the report."""


GRAYSCALE_MODES = {"1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"}
SIXTEEN_BIT_MODES = {"I", "I;16", "I;16B", "I;16L", "I;16N"}


@contextlib.contextmanager
def _own_pixel_limit() -> Iterator[None]:
    """Pillow without its decompression-bomb check (a warning, then an error at twice its
    limit): the caller checks the header's size against its own limit before decoding."""
    saved = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            yield
    finally:
        Image.MAX_IMAGE_PIXELS = saved


def load_image(
    path: str | Path, size: int | None = 256, max_pixels: int | None = None, channels: int = 3
) -> np.ndarray:
    """§2: rescale so the shorter side is ``size``, then take the central size x size crop;
    ``size=None`` keeps the native size (small datasets stored losslessly).

    Decodes by content (a PNG named .JPEG works), applies EXIF orientation, turns CMYK,
    grayscale, palette and alpha images into RGB (or, with ``channels=1``, grayscale,
    shape (size, size, 1)); 16-bit images are scaled to 8 bits. Raises ImageError with
    the reason for truncated, corrupt, non-image files and decompression bombs.
    """
    # One limit, checked here on the header's size: --max-pixels, else Pillow's (89.5 M
    # pixels unless a program changed it), never Pillow's own check on top.
    limit = max_pixels if max_pixels is not None else Image.MAX_IMAGE_PIXELS
    try:
        with _own_pixel_limit(), Image.open(path) as im:
            w, h = im.size
            if limit and w * h > limit:
                raise ImageError(f"decompression bomb: {w}x{h} pixels is over the limit of {limit}")
            if w < 1 or h < 1:
                raise ImageError(f"empty image ({w}x{h})")
            mode = "L" if channels == 1 else "RGB"
            if size is not None:
                # JPEG DCT-domain downscaling: decode big photos at >= the target size only.
                w0, h0 = -(-w * size // min(w, h)), -(-h * size // min(w, h))
                im.draft(mode, (max(1, w0), max(1, h0)))
            im = ImageOps.exif_transpose(im)
            if im.mode in SIXTEEN_BIT_MODES:
                # Pillow's convert() clips 16-bit values at 255 (a white image): scale.
                wide = np.asarray(im, dtype=np.float64) / 257.0
                im = Image.fromarray(np.clip(np.rint(wide), 0, 255).astype(np.uint8), "L")
            im = im.convert(mode)
            if size is None:
                arr = np.asarray(im, dtype=np.uint8)
                return arr[..., None] if channels == 1 else arr
            w, h = im.size
            scale = size / min(w, h)
            nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
            im = im.resize((nw, nh), Image.Resampling.BILINEAR)
            left, top = (nw - size) // 2, (nh - size) // 2
            im = im.crop((left, top, left + size, top + size))
            arr = np.asarray(im, dtype=np.uint8)
            return arr[..., None] if channels == 1 else arr
    except ImageError:
        raise
    except UnidentifiedImageError:
        raise ImageError("not an image (unrecognised content)") from None
    except (OSError, SyntaxError, ValueError, EOFError) as err:
        raise ImageError(f"corrupt or truncated image: {err}") from None


def encode_jpeg(img: np.ndarray, quality: int) -> bytes:
    try:
        import simplejpeg

        return simplejpeg.encode_jpeg(
            np.ascontiguousarray(img), quality=quality, colorspace="RGB", colorsubsampling="420"
        )
    except ImportError:  # pragma: no cover
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, "JPEG", quality=quality)
        return buf.getvalue()


def probe(path: str | Path) -> tuple[int, int, str] | None:
    """Width, height and mode from the file's header (no decoding); None if unreadable."""
    try:
        with _own_pixel_limit(), Image.open(path) as im:
            return im.size[0], im.size[1], im.mode
    except (OSError, SyntaxError, ValueError, EOFError):
        return None


def resize_to(img: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """(H, W, C) uint8 resized to ``shape`` = (H', W') (bilinear), channels kept."""
    if img.shape[:2] == shape:
        return img
    im = Image.fromarray(img[..., 0] if img.shape[-1] == 1 else img)
    out = np.asarray(im.resize((shape[1], shape[0]), Image.Resampling.BILINEAR), dtype=np.uint8)
    return out[..., None] if img.shape[-1] == 1 else out


def image_to_array(path: str | Path, image_size: tuple[int, int, int]) -> np.ndarray:
    """An image file -> (H, W, C) uint8 exactly as ``alexnet prepare`` stores one at that
    size (shorter side H, central crop, EXIF orientation, the same bad-file errors);
    one channel for grayscale models."""
    h, _, c = image_size
    return load_image(path, h, channels=c)
