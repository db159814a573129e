"""torch.hub entry points: the three AlexNet variants, untrained or from a weights file.

    model = torch.hub.load("path/to/alexnet", "paper", source="local", weights="model.safetensors")

``weights``: an ``alexnet train`` checkpoint or safetensors export (also one converted from
Caffe's ``bvlc_alexnet``), or torchvision's ``.pth`` (``owt``). The model comes in eval mode
with the file's preprocessing and classes attached: ``model.preprocessing`` (an
``alexnet.data.preprocess.Preprocessing``), ``model.class_names``; without ``weights``, keyword
arguments are ``ModelConfig`` fields (``num_classes=10``, ...).
"""

import os
import sys

dependencies = ["torch", "torchvision", "numpy", "safetensors", "yaml", "PIL", "simplejpeg"]

_SRC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "src")
if _SRC not in sys.path:  # this checkout's package, installed or not
    sys.path.insert(0, _SRC)


def _load(variant, weights=None, **kwargs):
    from alexnet.engine.inference import load_model
    from alexnet.network.model import build_model

    if weights is None:
        model = build_model(variant=variant, **kwargs)
        model.preprocessing, model.class_names = None, None  # untrained: none yet
        return model
    if kwargs:
        raise ValueError(f"the model's settings come from {weights}; got {sorted(kwargs)} as well")
    lm = load_model(weights)
    if lm.model.cfg.variant != variant:
        raise ValueError(
            f"{weights} holds the {lm.model.cfg.variant!r} variant; load it with "
            f"torch.hub.load(..., {lm.model.cfg.variant!r}, ...)"
        )
    model = lm.model
    model.preprocessing = lm.prep
    model.class_names = lm.names
    return model


def paper(weights=None, **kwargs):
    """The 2012 network (§3): LRN, overlapping pooling, the two towers as groups."""
    return _load("paper", weights, **kwargs)


def owt(weights=None, **kwargs):
    """torchvision's single-tower layout ("one weird trick"); loads torchvision's weights."""
    return _load("owt", weights, **kwargs)


def small(weights=None, **kwargs):
    """The 32 px variant for CIFAR-10 and Fashion-MNIST."""
    return _load("small", weights, **kwargs)
