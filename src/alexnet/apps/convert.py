"""``alexnet convert caffe``: Caffe's ``bvlc_alexnet`` as one of our weights files.

The network's tensors come from :mod:`alexnet.network.caffe`; here they are loaded into the
``paper`` network built with Caffe's settings (every shape checked), given Caffe's
preprocessing (its mean image, 227 px crops of 256 px images, BGR reordered into conv1),
and exported with a model card.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..config import ModelConfig, from_dict
from ..data.preprocess import Preprocessing
from ..data.sources import imagenet_class_names
from ..engine.card import card_facts, card_path_for, check_outputs, write_card
from ..engine.checkpoint import export_weights
from ..network.caffe import CAFFE_MEAN_BGR, CaffeError, read_caffemodel, read_mean, to_paper
from ..network.model import build_model

# What BVLC published for bvlc_alexnet (models/bvlc_alexnet/readme.md): ILSVRC-2012 val,
# one centre crop, 57.1% top-1 / 80.2% top-5 accuracy; and the file's SHA-1 there.
BVLC_REPORTED = "BVLC report 42.9% top-1 / 19.8% top-5 error on ILSVRC-2012 val, centre crop"
BVLC_SHA1 = "9116a64c0fbe4459d18f4bb6b56d647b63920377"


def _sha1(path: Path) -> str:
    import hashlib

    h = hashlib.sha1()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def convert_caffe(
    model_path: str | Path, out: str | Path, mean_path: str | Path | None = None,
    force: bool = False,
) -> dict[str, Any]:  # fmt: skip
    """Read ``model_path`` (a .caffemodel) and write ``out`` (.safetensors) and its card."""
    model_path, out = Path(model_path), Path(out)
    if out.suffix.lower() != ".safetensors":
        raise ValueError(f"{out}: the converted weights are a .safetensors file")
    check_outputs([out, card_path_for(out)], force)
    layers = read_caffemodel(model_path)
    state, settings, names = to_paper(layers, str(model_path))
    cfg = from_dict(ModelConfig, settings)
    model = build_model(cfg)
    own = model.state_dict()
    for key, value in state.items():
        layer = key.split(".")[0]
        if tuple(own[key].shape) != tuple(value.shape):
            raise CaffeError(
                f"{model_path}: layer {names[layer]!r} ({key}) has shape {tuple(value.shape)} "
                f"but the paper network with its other layers' sizes needs {tuple(own[key].shape)}"
            )
    model.load_state_dict({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in state.items()})
    if mean_path is not None:
        mean = read_mean(mean_path)
        if mean.shape[0] != mean.shape[1] or mean.shape[0] < 227:
            raise CaffeError(
                f"{mean_path}: a {mean.shape[0]}x{mean.shape[1]} mean; the images it describes "
                "must be square and at least 227 px (Caffe's ILSVRC-2012 mean is 256x256)"
            )
        mean_note = f"mean image from {mean_path}"
    else:
        rgb = np.asarray(CAFFE_MEAN_BGR[::-1], dtype=np.float32)
        mean = np.broadcast_to(rgb, (256, 256, 3)).copy()
        mean_note = "Caffe's per-channel ILSVRC-2012 means (no --mean given)"
    n = cfg.num_classes
    if n == 1000:
        wnids = imagenet_class_names()
        classes, class_names = tuple(wnids), tuple(wnids.values())
    else:
        classes = class_names = tuple(f"class_{i}" for i in range(n))
    prep = Preprocessing(
        image_size=(mean.shape[0], mean.shape[1], 3), crop=227, normalize="mean_image",
        input_scale=1.0, mean=mean.astype(np.float32), classes=classes, names=class_names,
    )  # fmt: skip
    params = sum(int(p.numel()) for p in model.parameters())
    notes = [
        f"Converted from Caffe ({model_path.name}); {mean_note}.",
        f"Caffe's settings kept: 227 px crops of {mean.shape[0]} px images, LRN "
        f"k={cfg.lrn_k:g} across all maps, no test-time dropout factor; conv1's input "
        "channels reordered from BGR to RGB (the same function on RGB images).",
        "Caffe resized images to 256x256 ignoring their aspect ratio; `alexnet prepare` "
        "resizes the shorter side and crops the centre, so accuracy can differ slightly.",
    ]
    if _sha1(model_path) == BVLC_SHA1:  # the published file, byte for byte
        notes.append(
            f"This is bvlc_alexnet (SHA-1 {BVLC_SHA1}). {BVLC_REPORTED}; `alexnet evaluate` "
            "with `--views ten-crop` should land a little below that."
        )
    card = card_facts(
        dataclasses.asdict(cfg.resolved()), prep, params, source=str(model_path),
        results={"notes": notes},
        reproduce=f"alexnet convert caffe {model_path}"
        + (f" --mean {mean_path}" if mean_path else "") + f" --out {out}",
    )  # fmt: skip
    export_weights(out, model.state_dict(), dataclasses.asdict(cfg), prep, card)
    card_file = write_card(card, card_path_for(out), out.name)
    return {"weights": str(out), "card": str(card_file), "layers": names, "settings": settings}
