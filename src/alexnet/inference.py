"""Loading a trained AlexNet from any weights file, and turning image files into inputs.

Accepted files: our training checkpoints (``checkpoint.pt``), our safetensors exports
(``model.safetensors``: weights + class names + mean image + PCA), and torchvision's AlexNet
weights (``alexnet-owt-7be5be79.pth``), which load into the ``owt`` variant and use
torchvision's preprocessing.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from .checkpoint import load_weights
from .config import ModelConfig, from_dict
from .data import TORCHVISION_MEAN, TORCHVISION_STD, LoaderSpec
from .model import AlexNet, build_model
from .prepare import ImageError, load_image


@dataclass
class LoadedModel:
    model: AlexNet
    path: str
    classes: list[str]
    names: list[str]
    mean: np.ndarray | None  # (H, W, C) 0..255 mean image, None for torchvision weights
    normalize: str = "mean_image"
    input_scale: float = 1.0
    image_size: tuple[int, int, int] = (256, 256, 3)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def crop(self) -> int:
        return self.model.cfg.input_size or 224

    def loader_spec(self, views: str = "center") -> LoaderSpec:
        return LoaderSpec(
            crop=self.crop,
            train=False,
            views=views,
            input_scale=self.input_scale,
            normalize=self.normalize,
        )


def load_model(path: str | Path, device: torch.device | str = "cpu") -> LoadedModel:
    """A model in eval mode with its class names and preprocessing, from any weights file."""
    state, meta = load_weights(path)
    cfg_dict = dict(meta.get("model_config") or {})
    torchvision = meta.get("source") == "torchvision"
    if torchvision:
        cfg_dict = {"variant": "owt", "num_classes": int(state["fc8.weight"].shape[0])}
    if not cfg_dict:
        raise ValueError(
            f"{path}: no model config in the file; use a checkpoint or safetensors export from `alexnet train`"
        )
    cfg = from_dict(ModelConfig, cfg_dict)
    if cfg.num_classes != state["fc8.weight"].shape[0]:
        cfg = dataclasses.replace(cfg, num_classes=int(state["fc8.weight"].shape[0]))
    model = build_model(cfg)
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as err:  # shape mismatches
        detail = " ".join(line.strip() for line in str(err).splitlines()[1:3])
        raise ValueError(
            f"{path}: weights do not fit the {cfg.variant} model described in the file: {detail}"
        ) from None
    if missing or unexpected:
        raise ValueError(
            f"{path}: weights do not fit a {cfg.variant} model: missing {missing[:4]}, unexpected {unexpected[:4]}"
        )
    model = model.to(device).eval()
    n = cfg.num_classes
    classes = list(meta.get("classes") or [str(i) for i in range(n)])
    names = list(meta.get("names") or classes)
    if torchvision and n == 1000 and not meta.get("classes"):
        from .sources import imagenet_class_names

        table = imagenet_class_names()
        classes = sorted(table)
        names = [table[w] for w in classes]
    prep = dict(meta.get("preprocessing") or {})
    mean = meta.get("mean_image")
    mean_np = None if mean is None else np.asarray(mean, dtype=np.float32)
    image_size = tuple(
        prep.get("image_size")
        or (mean_np.shape if mean_np is not None else (256, 256, cfg.in_channels))
    )
    return LoadedModel(
        model=model, path=str(path), classes=classes, names=names, mean=mean_np,
        normalize="torchvision" if torchvision else prep.get("normalize", "mean_image"),
        input_scale=float(prep.get("input_scale", 1.0)), image_size=image_size,  # type: ignore[arg-type]
    )  # fmt: skip


def image_to_array(path: str | Path, image_size: tuple[int, int, int]) -> np.ndarray:
    """An image file -> (H, W, C) uint8 as ``alexnet prepare`` would store it."""
    h, _, c = image_size
    if h >= 64:
        return load_image(path, h)  # §2: shorter side h, central crop
    try:
        with Image.open(path) as im:
            im = im.convert("L" if c == 1 else "RGB").resize((h, h), Image.Resampling.BILINEAR)
            arr = np.asarray(im, dtype=np.uint8)
    except (OSError, SyntaxError, ValueError) as err:
        raise ImageError(f"not a readable image: {err}") from None
    return arr[..., None] if c == 1 else arr


def images_to_inputs(
    arrays: list[np.ndarray], lm: LoadedModel, views: str = "center"
) -> torch.Tensor:
    """uint8 (H, W, C) arrays -> model inputs (N, C, S, S) or (10, N, C, S, S)."""
    from . import transforms as T

    x = torch.from_numpy(np.stack(arrays)).float()  # (N, H, W, C)
    if lm.normalize == "torchvision":
        x = (x - torch.tensor(TORCHVISION_MEAN) * 255) / (torch.tensor(TORCHVISION_STD) * 255)
    else:
        mean = (
            torch.from_numpy(lm.mean)
            if lm.mean is not None
            else x.mean(dim=(0, 1, 2), keepdim=True)[0]
        )
        x = (x - mean) * lm.input_scale
    if views == "ten-crop":
        return T.ten_crop(x, lm.crop).permute(0, 1, 4, 2, 3)
    return T.to_nchw(T.center_crop(x, lm.crop).contiguous())
