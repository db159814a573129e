"""Checkpoints (atomic, never unpickling arbitrary objects) and safetensors weight exports.

A checkpoint (``RUN_DIR/checkpoint.pt``) holds everything needed to continue a run
bit-exactly: model, optimizer, schedule state, grad scaler, epoch and position within it,
RNG states, the config and the code version. It holds only tensors and plain Python
values, so it loads with ``torch.load(weights_only=True)``.

A weights export (``model.safetensors``) holds the model's tensors plus what predicting
needs, its :class:`~alexnet.data.preprocess.Preprocessing`: the mean image and PCA as tensors
under ``meta.*``, and the model config, class names and the rest of the preprocessing as
JSON strings in the safetensors metadata. A checkpoint carries the same fields.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..atomic import atomic_path
from ..config import saved_model_config
from ..data.preprocess import Preprocessing
from ..network.convert import from_torchvision_state_dict, is_torchvision_state_dict

META_PREFIX = "meta."


def atomic_save(obj: Any, path: str | Path) -> Path:
    """torch.save, atomically (:func:`alexnet.atomic.atomic_path`)."""
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)
    return Path(path)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    with open(path, "rb") as f:
        head = f.read(4)
    # torch.save writes a zip archive (or, before torch 1.6, a pickle: protocol byte 0x80).
    if not (head.startswith(b"PK\x03\x04") or head[:1] == b"\x80"):
        raise ValueError(
            f"{path}: not a weights file (a training checkpoint .pt, an alexnet .safetensors "
            "export or a torchvision .pth)"
        )
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # unpickling errors come in several types
        first = (str(err).strip().splitlines() or [""])[0][:200]
        raise ValueError(
            f"{path}: not a loadable checkpoint ({type(err).__name__}: {first})"
        ) from None


def export_weights(
    path: str | Path,
    state: dict[str, Tensor],
    model_config: dict[str, Any],
    prep: Preprocessing,
    card: dict[str, Any] | None = None,
) -> Path:
    """The one weights export (training's ``model.safetensors`` and ``best.safetensors``,
    and ``alexnet export``): the model's tensors plus its whole preprocessing (mean image
    and PCA as ``meta.*`` tensors; crop, normalisation, input scale, image size, class
    names as JSON metadata), written atomically."""
    from safetensors.torch import save_file

    if Path(path).suffix != ".safetensors":
        raise ValueError(
            f"{path}: a weights export is a safetensors file; give it the .safetensors suffix"
        )
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in state.items()}
    tensors.update({META_PREFIX + k: v.contiguous() for k, v in prep.tensors().items()})
    metadata = {
        "format": "alexnet-weights",
        "model_config": json.dumps(model_config),
        "classes": json.dumps(list(prep.classes)),
        "names": json.dumps(list(prep.names)),
        "preprocessing": json.dumps(prep.meta()),
    }
    if card is not None:  # the model card's facts (engine/card.py)
        metadata["card"] = json.dumps(card, default=str)
    try:
        with atomic_path(path) as tmp:  # a full disk comes out of it as an OSError
            save_file(tensors, str(tmp), metadata=metadata)
    except OSError:
        raise
    except Exception as err:  # safetensors' own error type for other I/O failures
        first = (str(err).splitlines() or [""])[0][:200]
        raise OSError(f"could not write {path}: {type(err).__name__}: {first}") from None
    return Path(path)


def load_weights(path: str | Path) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Model weights from a checkpoint, a safetensors export or torchvision's AlexNet file.

    Returns (state_dict in our layer names, metadata: model_config, classes, names,
    mean_image, eigenvalues, eigenvectors, preprocessing — whichever the file has).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path}")
    meta: dict[str, Any] = {}
    if path.suffix == ".onnx":
        raise ValueError(
            f"{path}: an ONNX export is for inference runtimes and is not read back; use the "
            "checkpoint or .safetensors file it was exported from"
        )
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt") as f:
                raw_meta = f.metadata() or {}
                tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open has no iterator
        except Exception as err:  # the Rust reader raises its own error types
            raise ValueError(
                f"{path}: not a readable safetensors file ({type(err).__name__}: {err}); "
                "export weights with `alexnet export`"
            ) from None
        for key in ("model_config", "classes", "names", "preprocessing", "card"):
            if key in raw_meta:
                try:
                    meta[key] = json.loads(raw_meta[key])
                except json.JSONDecodeError:
                    raise ValueError(f"{path}: its {key!r} metadata is not valid JSON") from None
        for key in [k for k in tensors if k.startswith(META_PREFIX)]:
            meta[key[len(META_PREFIX) :]] = tensors.pop(key)
        state = tensors
    else:
        obj = load_checkpoint(path)
        if isinstance(obj, dict) and "model" in obj and isinstance(obj["model"], dict):
            state = obj["model"]
            for key in (
                "classes",
                "names",
                "preprocessing",
                "mean_image",
                "eigenvalues",
                "eigenvectors",
            ):
                if key in obj:
                    meta[key] = obj[key]
            if "config" in obj:
                meta["model_config"] = obj["config"].get("model", {})
                # What a model card says of a training run (engine/card.py).
                meta["run"] = {
                    k: obj.get(k) for k in ("config", "best", "progress", "execution", "metrics")
                }
            if isinstance(obj.get("card"), dict):
                meta["card"] = obj["card"]
        elif isinstance(obj, dict) and all(isinstance(v, Tensor) for v in obj.values()):
            state = obj
        else:
            raise ValueError(f"{path}: neither an alexnet checkpoint nor a state_dict of tensors")
    if is_torchvision_state_dict(state):
        state = from_torchvision_state_dict(state)
        meta.setdefault("model_config", {"variant": "owt"})
        meta.setdefault("source", "torchvision")
    elif isinstance(meta.get("model_config"), dict) and meta["model_config"]:
        meta["model_config"] = saved_model_config(meta["model_config"])
    return state, meta


def load_matching(model: torch.nn.Module, state: dict[str, Tensor]) -> dict[str, list[str]]:
    """Load every tensor whose name and shape match; report the rest by layer name.

    Returns {"loaded": [...], "shape_mismatch": ["fc8.weight: file (1000, 4096) vs model (5, 4096)"],
    "missing": [...], "unexpected": [...]}.
    """
    own = model.state_dict()
    loaded, mismatch, unexpected = [], [], []
    for key, value in state.items():
        if key not in own:
            unexpected.append(key)
        elif tuple(own[key].shape) != tuple(value.shape):
            mismatch.append(f"{key}: file {tuple(value.shape)} vs model {tuple(own[key].shape)}")
        else:
            own[key] = value.to(own[key].dtype)
            loaded.append(key)
    model.load_state_dict(own)
    missing = [k for k in own if k not in state]
    return {
        "loaded": loaded,
        "shape_mismatch": mismatch,
        "missing": missing,
        "unexpected": unexpected,
    }
