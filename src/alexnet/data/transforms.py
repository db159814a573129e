"""The paper's augmentation and test views (§4.1) as batch tensor operations.

Images travel as uint8 NHWC (cheap to decode, crop and copy); everything that needs floats
(mean-image subtraction, PCA colour noise) runs on the training device on whole batches.
Crop offsets, flips and PCA coefficients are drawn per sample by the sampler in
:mod:`alexnet.data.dataset`, so a batch is the same whatever the worker count or rank layout.

Batches are NHWC in memory throughout; :func:`to_nchw` gives the (N, C, H, W) view the
model takes, which *is* channels_last memory, so no copy is made.
"""

from __future__ import annotations

import torch
from torch import Tensor


def to_nchw(x: Tensor) -> Tensor:
    """(N, H, W, C) memory -> (N, C, H, W) view in channels_last layout (no copy)."""
    return x.permute(0, 3, 1, 2)


def crop_indices(ys: Tensor, xs: Tensor, flips: Tensor, size: int) -> tuple[Tensor, Tensor]:
    """Row and column source indices (N, size) for per-sample crops, mirrored where flipped."""
    ar = torch.arange(size, device=ys.device)
    rows = ys.view(-1, 1) + ar
    cols = xs.view(-1, 1) + torch.where(flips.view(-1, 1).bool(), size - 1 - ar, ar)
    return rows, cols


def crop_batch(x: Tensor, ys: Tensor, xs: Tensor, flips: Tensor, size: int) -> Tensor:
    """§4.1: a size x size crop at (ys, xs) of each (N, H, W, C) image, mirrored where
    flipped -> (N, size, size, C)."""
    rows, cols = crop_indices(ys.to(x.device), xs.to(x.device), flips.to(x.device), size)
    n = torch.arange(x.shape[0], device=x.device).view(-1, 1, 1)
    return x[n, rows[:, :, None], cols[:, None, :]]


def subtract_mean_crops(
    x: Tensor,
    mean: Tensor,
    ys: Tensor,
    xs: Tensor,
    flips: Tensor,
    dtype: torch.dtype = torch.float32,
    rgb_offset: Tensor | None = None,
    mean_flipped: Tensor | None = None,
) -> Tensor:
    """x - (the (H, W, C) mean image cut and mirrored exactly like each sample) + rgb_offset.

    x: (N, S, S, C) uint8 crops -> (N, S, S, C) ``dtype``. On CPU one pass per sample
    while it is in cache (no gather; mirrored crops read a pre-mirrored mean); on
    accelerators one gather for the batch.
    """
    n, s, c = x.shape[0], x.shape[1], x.shape[3]
    if x.device.type != "cpu":
        out = x.to(dtype) - crop_batch(mean.expand(n, *mean.shape), ys, xs, flips, s).to(dtype)
        return finish(out, 1.0, rgb_offset)
    m = mean.to(dtype)
    # A mirrored crop at x0 is the crop of the mirrored mean at W - x0 - s.
    m_flipped = mean_flipped.to(dtype) if mean_flipped is not None else m.flip(1)
    w = m.shape[1]
    out = torch.empty(x.shape, dtype=dtype)
    rows = _offset_rows(rgb_offset, s) if rgb_offset is not None else None
    for i in range(n):
        y0, x0 = int(ys[i]), int(xs[i])
        view = (
            m_flipped[y0 : y0 + s, w - x0 - s : w - x0] if flips[i] else m[y0 : y0 + s, x0 : x0 + s]
        )
        torch.sub(x[i], view, out=out[i])
        if rows is not None:
            out[i].view(s, s * c).add_(rows[i])
    return out


def _offset_rows(rgb_offset: Tensor, width: int) -> Tensor:
    """(N, C) -> (N, W*C): per-pixel offsets laid out like one NHWC image row, so adding
    them is a contiguous broadcast (an innermost broadcast over C=3 is ~15x slower)."""
    return rgb_offset.repeat(1, width)


def pca_offsets(alphas: Tensor, eigenvalues: Tensor, eigenvectors: Tensor) -> Tensor:
    """§4.1 "fancy PCA": [p1 p2 p3][a1 s1, a2 s2, a3 s3]^T for each sample -> (N, C), with
    s_i = sqrt(l_i) the standard deviation of the pixels along p_i, in the units of the
    pixel values the covariance was computed on.

    The printed formula writes l_i and does not say in which units; the authors' code
    (cuda-convnet's convdata.py, ``color_stdevs``) multiplies a_i by the standard
    deviation, which is what produced the paper's numbers. On the shared ImageNet samples that is
    11.4 / 3.4 / 1.7 grey levels of noise along the three components at a_i ~ N(0, 0.1),
    where a_i * l_i on a [0, 1] scale gave 5.1 / 0.45 / 0.11. ``eigenvectors`` holds p_i as columns;
    the alphas are drawn once per image each time it is used.
    """
    return (alphas * eigenvalues.clamp_min(0).sqrt()) @ eigenvectors.T


def finish(x: Tensor, scale: float = 1.0, rgb_offset: Tensor | None = None) -> Tensor:
    """In place on a float (N, H, W, C) batch: add per-sample RGB offsets, then scale."""
    if rgb_offset is not None:
        n, h, w, c = x.shape
        x.view(n, h, w * c).add_(_offset_rows(rgb_offset.to(x.dtype), w).view(n, 1, w * c))
    if scale != 1.0:
        x.mul_(scale)
    return x


def center_crop(x: Tensor, size: int) -> Tensor:
    """The central size x size window of (..., H, W, C)."""
    h, w = x.shape[-3], x.shape[-2]
    top, left = (h - size) // 2, (w - size) // 2
    return x[..., top : top + size, left : left + size, :]


def ten_crop_offsets(height: int, width: int, size: int) -> list[tuple[int, int, bool]]:
    """§4.1 test views: four corners and the centre, then the same five mirrored."""
    corners = [(0, 0), (0, width - size), (height - size, 0), (height - size, width - size)]
    centre = ((height - size) // 2, (width - size) // 2)
    five = [*corners, centre]
    return [(t, left, False) for t, left in five] + [(t, left, True) for t, left in five]


def views_label(views: str, image_hw: tuple[int, int] | None, crop: int | None) -> str:
    """How a result's views were taken, in words: the 10-view protocol on images no larger
    than the crop is just the image and its mirror (see ten_crop)."""
    if views != "ten-crop":
        return "centre crop"
    if image_hw is not None and crop is not None and max(image_hw) <= crop:
        return "10 views = the whole image and its mirror, averaged"
    if image_hw is None:
        return "10 views averaged"
    return "10 views (4 corners, centre, mirrored), averaged"


def ten_crop(x: Tensor, size: int) -> Tensor:
    """(N, H, W, C) -> (10, N, size, size, C): corners + centre, and their mirrors.

    When the crop is the whole image the five positions coincide, and the ten views are
    five copies each of the image and its mirror; then only those two are returned, which
    leaves the average over views unchanged and costs a fifth of the compute.
    """
    h, w = x.shape[1], x.shape[2]
    if h == size and w == size:
        return torch.stack([x, x.flip(2)])
    views = []
    for top, left, flip in ten_crop_offsets(h, w, size):
        v = x[:, top : top + size, left : left + size, :]
        views.append(v.flip(2) if flip else v)
    return torch.stack(views)


def pad_crop(
    x: Tensor, ys: Tensor, xs: Tensor, flips: Tensor, pad: int, size: int | None = None
) -> Tensor:
    """Small-image preset: a random ``size`` crop (default: the image's side) of the
    zero-padded, already mean-subtracted (N, H, W, C) batch, mirrored where flipped (zero
    padding = the mean)."""
    size = size or x.shape[1]
    if pad:
        x = torch.nn.functional.pad(x, (0, 0, pad, pad, pad, pad))
    return crop_batch(x, ys, xs, flips, size)


def cutout(x: Tensor, centres: Tensor, size: int) -> Tensor:
    """Cutout (DeVries & Taylor 2017) on a mean-subtracted (N, H, W, C) batch: a size x size
    square of each sample set to 0, i.e. to the mean. ``centres``: (N, 2) fractions in
    [0, 1) of H and W; squares clipped by the borders stay smaller, as in the original."""
    n, h, w, _ = x.shape
    cy = (centres[:, 0] * h).long().clamp_(max=h - 1).view(n, 1)
    cx = (centres[:, 1] * w).long().clamp_(max=w - 1).view(n, 1)
    top, left = cy - size // 2, cx - size // 2
    rows = torch.arange(h, device=x.device).view(1, h)
    cols = torch.arange(w, device=x.device).view(1, w)
    inside_y = (rows >= top) & (rows < top + size)  # (N, H)
    inside_x = (cols >= left) & (cols < left + size)  # (N, W)
    return x.masked_fill_((inside_y.view(n, h, 1) & inside_x.view(n, 1, w)).unsqueeze(-1), 0.0)
