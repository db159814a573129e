"""Decoding real-world image files into the uint8 arrays the pipeline stores (§2).

``alexnet prepare`` uses :func:`load_image` and :func:`encode_jpeg` for datasets;
``alexnet predict`` uses :func:`image_to_array` for single files, so a file is decoded
exactly as it would have been stored.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError


class ImageError(Exception):
    """An input image that cannot be used; the message is the reason for the report."""


def load_image(
    path: str | Path, size: int = 256, max_pixels: int | None = None, channels: int = 3
) -> np.ndarray:
    """§2: rescale so the shorter side is ``size``, then take the central size x size crop.

    Decodes by content (a PNG named .JPEG works), applies EXIF orientation, turns CMYK,
    grayscale, palette and alpha images into RGB (or, with ``channels=1``, grayscale,
    shape (size, size, 1)). Raises ImageError with the reason for truncated, corrupt,
    non-image files and decompression bombs.
    """
    limit = max_pixels if max_pixels is not None else Image.MAX_IMAGE_PIXELS
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                w, h = im.size
                if limit and w * h > limit:
                    raise ImageError(
                        f"decompression bomb: {w}x{h} pixels is over the limit of {limit}"
                    )
                if w < 1 or h < 1:
                    raise ImageError(f"empty image ({w}x{h})")
                # JPEG DCT-domain downscaling: decode big photos at >= the target size only.
                mode = "L" if channels == 1 else "RGB"
                im.draft(
                    mode, (max(1, -(-w * size // min(w, h))), max(1, -(-h * size // min(w, h))))
                )
                im = ImageOps.exif_transpose(im)
                im = im.convert(mode)
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
    except Image.DecompressionBombError as err:
        raise ImageError(f"decompression bomb: {err}") from None
    except Image.DecompressionBombWarning as err:
        raise ImageError(f"decompression bomb: {err}") from None
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


def image_to_array(path: str | Path, image_size: tuple[int, int, int]) -> np.ndarray:
    """An image file -> (H, W, C) uint8 exactly as ``alexnet prepare`` stores one at that
    size (shorter side H, central crop, EXIF orientation, the same bad-file errors);
    one channel for grayscale models."""
    h, _, c = image_size
    return load_image(path, h, channels=c)
