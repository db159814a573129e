"""Weights to and from torchvision's AlexNet (our ``owt`` variant is the same network).

torchvision keeps its layers in two ``nn.Sequential`` containers, so its keys are indices
(``features.0.weight``); ours are the paper's layer names (``conv1.weight``). Only the
learned layers have keys, so the map below is the whole conversion.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

# Our names -> torchvision.models.AlexNet's Sequential indices.
_TORCHVISION_KEYS = {
    "conv1": "features.0",
    "conv2": "features.3",
    "conv3": "features.6",
    "conv4": "features.8",
    "conv5": "features.10",
    "fc6": "classifier.1",
    "fc7": "classifier.4",
    "fc8": "classifier.6",
}


def _rename(state: dict[str, Tensor], layers: dict[str, str], unknown: str) -> dict[str, Tensor]:
    """Keys ``<layer>.<param>`` with each layer renamed by ``layers``; KeyError otherwise."""
    out = {}
    for key, value in state.items():
        layer, _, param = key.rpartition(".")
        if layer not in layers:
            raise KeyError(f"{key} {unknown}")
        out[f"{layers[layer]}.{param}"] = value
    return out


def to_torchvision_state_dict(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """An ``owt`` state_dict in torchvision's key names (loads with strict=True)."""
    return _rename(
        state, _TORCHVISION_KEYS, "has no torchvision counterpart (only owt models convert)"
    )


def from_torchvision_state_dict(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """torchvision AlexNet weights (e.g. alexnet-owt-7be5be79.pth) in our ``owt`` names."""
    reverse = {v: k for k, v in _TORCHVISION_KEYS.items()}
    return _rename(state, reverse, "is not a torchvision AlexNet parameter")


def is_torchvision_state_dict(state: dict[str, Any]) -> bool:
    return any(k.startswith(("features.", "classifier.")) for k in state)
