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

from ..config import ModelConfig, from_dict
from ..data.dataset import LoaderSpec
from ..data.preprocess import InputTransform, Preprocessing
from ..network.model import AlexNet, build_model
from .card import card_facts, card_from_checkpoint
from .checkpoint import load_weights


@dataclass
class LoadedModel:
    model: AlexNet
    path: str
    prep: Preprocessing  # how this model's inputs are made; classes and names
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def classes(self) -> list[str]:
        """Class ids; numbers where the weights file names none."""
        return list(self.prep.classes) or [str(i) for i in range(self.model.cfg.num_classes)]

    @property
    def names(self) -> list[str]:
        return list(self.prep.names) or self.classes

    @property
    def image_size(self) -> tuple[int, int, int]:
        return self.prep.image_size

    @property
    def crop(self) -> int:
        return self.prep.crop

    def loader_spec(self, views: str = "center") -> LoaderSpec:
        return LoaderSpec(train=False, views=views)


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
    prep = Preprocessing.from_meta(meta, str(path), cfg.num_classes, cfg.input_size or 224)
    if prep.crop != (cfg.input_size or 224) or prep.channels != cfg.in_channels:
        raise ValueError(
            f"{path}: its preprocessing makes {prep.crop}x{prep.crop}x{prep.channels} inputs "
            f"but its model takes {cfg.input_size or 224}x{cfg.input_size or 224}x{cfg.in_channels}"
        )
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
    params = sum(int(v.numel()) for v in model.parameters())
    if isinstance(meta.get("card"), dict):
        card = meta["card"]
    elif meta.get("run"):
        card = card_from_checkpoint(meta["run"], prep, params, str(path))
    else:
        card = card_facts(
            dataclasses.asdict(cfg.resolved()), prep, params,
            source=f"{path} (torchvision's weights)" if torchvision else str(path),
        )  # fmt: skip
    return LoadedModel(
        model=model.to(device).eval(), path=str(path), prep=prep, extra={"card": card}
    )


def images_to_inputs(
    arrays: list[np.ndarray], lm: LoadedModel, views: str = "center"
) -> torch.Tensor:
    """uint8 (H, W, C) arrays -> model inputs (N, C, S, S) or (10, N, C, S, S) on the
    model's device, exactly as the evaluation loader makes them."""
    device = next(lm.model.parameters()).device
    return InputTransform(lm.prep, device)(torch.from_numpy(np.stack(arrays)), views)
