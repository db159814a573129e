"""The preprocessing contract: how a stored uint8 image becomes the model's input.

One :class:`Preprocessing` describes it (stored image size and channels, crop, mean image,
PCA of the training pixels, input scale, normalisation kind, class names). ``alexnet
prepare`` computes its data part, a training run adds its ``data.*`` settings
(:meth:`Prepared.preprocessing <alexnet.data.dataset.Prepared.preprocessing>`), every checkpoint
and weights export stores it (:meth:`Preprocessing.tensors`, :meth:`Preprocessing.meta`),
and every consumer loads it back (:meth:`Preprocessing.from_meta`). :class:`InputTransform`
is the one implementation of "uint8 batch -> model inputs", used by training, evaluation,
prediction, features and the figures. A mismatch between a model's preprocessing and the
data it is given is an error naming both sides (:meth:`Preprocessing.check_data`).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import torch
from torch import Tensor

from . import transforms as T
from .sources import DataError

NORMALIZE = ("mean_image", "torchvision")
# torchvision's published weights: [0, 1] pixels, per-channel mean and std.
TORCHVISION_MEAN = (0.485, 0.456, 0.406)
TORCHVISION_STD = (0.229, 0.224, 0.225)


@dataclasses.dataclass(frozen=True, eq=False)
class Preprocessing:
    image_size: tuple[int, int, int]  # (H, W, C) of the stored uint8 images
    crop: int  # the model's input side
    normalize: str = "mean_image"  # "mean_image" (§2) | "torchvision" (owt weights)
    input_scale: float = 1.0  # multiplies mean-subtracted 0..255 pixels
    mean: np.ndarray | None = None  # (H, W, C) float32 0..255 mean training image (§2)
    eigenvalues: np.ndarray | None = None  # (C,) PCA of the training RGB pixels (§4.1)
    eigenvectors: np.ndarray | None = None  # (C, C), eigenvectors as columns
    classes: tuple[str, ...] = ()  # empty where the weights file names none
    names: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.normalize not in NORMALIZE:
            raise ValueError(f"normalize={self.normalize!r}; choose one of {list(NORMALIZE)}")
        if self.normalize == "mean_image":
            if self.mean is None:
                raise ValueError("mean-image normalisation needs a mean image; none was given")
            if tuple(self.mean.shape) != tuple(self.image_size):
                raise ValueError(
                    f"mean image {tuple(self.mean.shape)} does not match the image size "
                    f"{tuple(self.image_size)} it was saved with"
                )

    @property
    def channels(self) -> int:
        return int(self.image_size[2])

    @property
    def has_pca(self) -> bool:
        return self.eigenvalues is not None and self.eigenvectors is not None and self.channels == 3

    # ----------------------------------------------------------------------------------
    # Saving and loading (checkpoints and weights exports carry the same fields)

    def meta(self) -> dict[str, Any]:
        """The JSON part: what is not a tensor."""
        return {
            "image_size": list(self.image_size),
            "crop": self.crop,
            "normalize": self.normalize,
            "input_scale": self.input_scale,
        }

    def tensors(self) -> dict[str, Tensor]:
        """The array part, as float32 tensors (mean_image, eigenvalues, eigenvectors)."""
        out = {}
        for key, value in (
            ("mean_image", self.mean),
            ("eigenvalues", self.eigenvalues),
            ("eigenvectors", self.eigenvectors),
        ):
            if value is not None:
                out[key] = torch.as_tensor(np.asarray(value, dtype=np.float32))
        return out

    @classmethod
    def from_meta(
        cls, meta: dict[str, Any], where: str, num_classes: int, input_size: int
    ) -> Preprocessing:
        """From what :func:`alexnet.engine.checkpoint.load_weights` read out of a file (``where``
        names it in errors); ``input_size``: the model's input side, the crop where the
        file does not record one. torchvision's own weights file gets torchvision's
        preprocessing and ImageNet's classes."""
        prep = dict(meta.get("preprocessing") or {})
        classes = list(meta.get("classes") or [])
        names = list(meta.get("names") or classes)
        if meta.get("source") == "torchvision":
            if not classes and num_classes == 1000:
                from .sources import imagenet_class_names

                table = imagenet_class_names()
                classes = sorted(table)
                names = [table[w] for w in classes]
            prep = {"image_size": [256, 256, 3], "crop": 224, "normalize": "torchvision"}
        names = names or classes  # none recorded (a bare state dict): consumers number them
        if classes and len(classes) != num_classes:
            raise ValueError(
                f"{where}: {len(classes)} class names but the model predicts {num_classes} classes"
            )

        def array(key: str) -> np.ndarray | None:
            value = meta.get(key, prep.get(key))
            if value is None:
                return None
            if isinstance(value, Tensor):
                value = value.detach().cpu().numpy()
            return np.asarray(value, dtype=np.float32)

        mean = array("mean_image")
        if "image_size" in prep:
            image_size = tuple(int(v) for v in prep["image_size"])
        elif mean is not None:
            image_size = tuple(mean.shape)
        else:
            raise ValueError(f"{where}: no preprocessing recorded (image size, mean image)")
        try:
            return cls(
                image_size=image_size,  # type: ignore[arg-type]
                crop=int(prep.get("crop") or input_size),
                normalize=prep.get("normalize", "mean_image"),
                input_scale=float(prep.get("input_scale", 1.0)),
                mean=mean,
                eigenvalues=array("eigenvalues"),
                eigenvectors=array("eigenvectors"),
                classes=tuple(classes),
                names=tuple(names),
            )
        except ValueError as err:
            raise ValueError(f"{where}: {err}") from None

    # ----------------------------------------------------------------------------------
    def check_data(
        self, image_size: tuple[int, int, int], classes: list[str] | None, where: str
    ) -> None:
        """Raise :class:`DataError` naming both sides where the data does not fit: stored
        image size and channels (the mean image is per pixel; the crop's field of view
        depends on the size), and (when labels are used) the class list."""
        self._check_channels(image_size, where)
        if tuple(image_size) != tuple(self.image_size):
            why = (
                "its mean image is per pixel"
                if self.normalize == "mean_image"
                else "the crop's field of view depends on it"
            )
            raise DataError(
                f"{where} holds {image_size[0]}x{image_size[1]}x{image_size[2]} images but the "
                f"model was trained on {self.image_size[0]}x{self.image_size[1]}x"
                f"{self.image_size[2]} ({why}): prepare the data with "
                f"`alexnet prepare ... --size {self.image_size[0]}` (or, for a deliberate "
                "transfer, pass --allow-mismatch to evaluate/features)"
            )
        if classes is not None and self.classes and list(classes) != list(self.classes):
            ours, theirs = list(self.classes), list(classes)
            diff = next(
                (i for i, (a, b) in enumerate(zip(ours, theirs, strict=False)) if a != b),
                min(len(ours), len(theirs)),
            )
            raise DataError(
                f"{where} has {len(theirs)} classes and the model {len(ours)}; they first differ "
                f"at index {diff} (data: {theirs[diff] if diff < len(theirs) else '-'}, model: "
                f"{ours[diff] if diff < len(ours) else '-'}): use data prepared with the "
                "model's classes (or, for a deliberate transfer with as many classes, pass "
                "--allow-mismatch to evaluate/features)"
            )

    def _check_channels(self, image_size: tuple[int, int, int], where: str) -> None:
        if int(image_size[2]) != self.channels:
            raise DataError(
                f"{where} holds {image_size[2]}-channel images but the model takes "
                f"{self.channels}: prepare the data as {self.channels}-channel images (no "
                "option adapts this)"
            )

    def _check_class_count(self, classes: list[str], where: str) -> None:
        if self.classes and len(classes) != len(self.classes):
            raise DataError(
                f"{where} has {len(classes)} classes and the model {len(self.classes)}: "
                "evaluate on data with the model's classes (for other classes, fine-tune "
                "with `alexnet train --preset finetune --init-from ...`)"
            )

    def for_data(
        self,
        image_size: tuple[int, int, int],
        classes: list[str] | None,
        where: str,
        allow_mismatch: bool = False,
    ) -> tuple[Preprocessing, list[str]]:
        """This contract checked against a prepared split (:meth:`check_data`), or, with
        ``allow_mismatch`` (a deliberate transfer), adapted to it with a note per change:

        - another stored size: the model's mean image is reduced to its per-channel mean
          (Caffe's "mean value"), which fits any size; the crop stays the model's;
        - other class names: labels are compared by index (the count must still match).

        A different channel count cannot be adapted and stays an error."""
        if not allow_mismatch:
            self.check_data(image_size, classes, where)
            return self, []
        size = tuple(int(v) for v in image_size)
        self._check_channels(image_size, where)
        if classes is not None:
            self._check_class_count(classes, where)
            moved = [
                c for i, c in enumerate(classes) if c in self.classes and self.classes.index(c) != i
            ]
            if moved:
                raise DataError(
                    f"{where} has {len(moved)} of the model's classes at other indices (e.g. "
                    f"{moved[0]!r}): comparing labels by index would score them wrong; "
                    "prepare the data with the model's class list"
                )
        prep, notes = self, []
        if size != tuple(self.image_size):
            mean = None
            if self.mean is not None:
                mean = np.broadcast_to(self.mean.mean(axis=(0, 1)), size).astype(np.float32)
            prep = dataclasses.replace(self, image_size=size, mean=mean)  # type: ignore[arg-type]
            notes.append(
                f"{where} holds {size[0]}x{size[1]} images and the model was trained on "
                f"{self.image_size[0]}x{self.image_size[1]}: using the model's per-channel mean"
                " instead of its mean image"
            )
        if classes is not None and self.classes and list(classes) != list(self.classes):
            notes.append(
                f"{where} names its classes differently from the model: labels are compared by "
                "index"
            )
        return prep, notes


class InputTransform:
    """:class:`Preprocessing` bound to a device: uint8 NHWC batches -> float model inputs,
    (N, C, S, S) in channels_last memory, or (V, N, C, S, S) for 10-crop views.

    Mean image, PCA and torchvision's statistics are moved to ``device`` once.
    """

    def __init__(
        self, prep: Preprocessing, device: torch.device, dtype: torch.dtype = torch.float32
    ) -> None:
        self.prep, self.device, self.dtype = prep, device, dtype
        self.mean = None if prep.mean is None else torch.from_numpy(prep.mean).to(device)
        self.mean_flipped = None if self.mean is None else self.mean.flip(1).contiguous()
        self.eigenvalues = self.eigenvectors = None
        if prep.has_pca:
            self.eigenvalues = torch.from_numpy(prep.eigenvalues).to(device)  # type: ignore[arg-type]
            self.eigenvectors = torch.from_numpy(prep.eigenvectors).to(device)  # type: ignore[arg-type]
        self.tv_mean = torch.tensor(TORCHVISION_MEAN, device=device) * 255
        self.tv_std = torch.tensor(TORCHVISION_STD, device=device) * 255

    def _subtract(self, x: Tensor, mean: Tensor | None = None) -> Tensor:
        """x - mean (the whole mean image unless given), as a new float tensor."""
        if self.prep.normalize == "torchvision":
            return (x.to(self.dtype) - self.tv_mean) / self.tv_std
        m = self.mean if mean is None else mean
        return x.to(self.dtype) - m.to(self.dtype)  # type: ignore[union-attr]

    def _scale(self) -> float:
        return 1.0 if self.prep.normalize == "torchvision" else self.prep.input_scale

    def __call__(self, x: Tensor, views: str = "center") -> Tensor:
        """Evaluation views of whole stored images (N, H, W, C), or of centre crops already
        cut to the model's side (JPEG loader workers do that): "center" or "ten-crop"."""
        crop = self.prep.crop
        x = x.to(self.device, non_blocking=True)
        if x.shape[1] == crop and self.mean is not None and self.mean.shape[0] != crop:
            out = self._subtract(x, T.center_crop(self.mean, crop))  # centre crop from a worker
        else:
            out = self._subtract(x)
        out = T.finish(out, self._scale())
        if views == "ten-crop":
            return T.ten_crop(out, crop).permute(0, 1, 4, 2, 3)
        if out.shape[1] != crop:
            out = T.center_crop(out, crop).contiguous()
        return T.to_nchw(out)

    def train(
        self, x: Tensor, ys: Tensor, xs: Tensor, flips: Tensor, alphas: Tensor, pca_std: float,
        pad: int = 0, cropped: bool = True, cutout: int = 0, cuts: Tensor | None = None,
    ) -> Tensor:  # fmt: skip
        """§4.1 training inputs. ``cropped``: x holds the random crops already (JPEG workers
        cut and mirror them); else x holds whole images and the crop (after zero padding by
        ``pad``: small images) is cut here. PCA colour noise is added in 0..255 units
        before normalising, so it has the paper's strength whatever the normalisation.
        ``cutout`` > 0: a square of that side, centred at ``cuts`` (fractions of the crop
        side), is set to 0 (the mean) in each crop."""
        prep, dt = self.prep, self.dtype
        x = x.to(self.device, non_blocking=True)
        offset = None
        if pca_std > 0 and self.eigenvalues is not None:
            offset = 255.0 * T.pca_offsets(
                alphas.to(self.device), self.eigenvalues, self.eigenvectors
            )  # type: ignore[arg-type]
        if prep.normalize == "torchvision" and offset is not None:
            offset = offset / self.tv_std  # the noise in the normalised inputs' units
        if cropped and prep.normalize == "mean_image":
            # The mean image cut and mirrored exactly like each sample's crop.
            out = T.subtract_mean_crops(
                x,
                self.mean,
                ys,
                xs,
                flips,
                dt,
                offset,
                self.mean_flipped,  # type: ignore[arg-type]
            )
            out = T.finish(out, self._scale())
        else:
            out = T.finish(self._subtract(x), self._scale(), offset)
            if not cropped:
                out = T.pad_crop(out, ys, xs, flips, pad, prep.crop)
        if cutout and cuts is not None:
            out = T.cutout(out, cuts.to(self.device), cutout)
        return T.to_nchw(out)
