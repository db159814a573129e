"""AlexNet as in Krizhevsky, Sutskever & Hinton (NIPS 2012), plus two relatives.

Variants
  paper  the 2012 network (§3, Figure 2): 96/256/384/384/256 kernels, the two GPU "towers"
         as groups=2 in conv2, conv4 and conv5, LRN after the ReLUs of conv1 and conv2,
         overlapping 3/2 max-pooling, dropout 0.5 on the outputs of fc6 and fc7.
         60,965,224 parameters with 1000 classes.
  owt    torchvision's "one weird trick" network: 64/192/384/256/256 kernels, no LRN, no
         groups, adaptive 6x6 average pool, dropout on the inputs of fc6 and fc7.
         61,100,840 parameters; its weights convert to and from torchvision's exactly.
  small  the same layer types and order for 28-32 px images (CIFAR-10, Fashion-MNIST):
         conv1 is 5x5 stride 1, half the kernels, 1024-wide fc6/fc7.

Input size (paper): the paper says 224x224, but 11x11 stride-4 convolution gives 55x55
from 224 only with padding 2 (torchvision's choice), or from 227 without padding (Caffe's).
We default to 224 with padding 2; ``input_size=227`` switches conv1 to padding 0. Both
give the paper's 55x55.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor, nn

from .config import ConfigError, ModelConfig
from .fourier import Conv2d
from .lrn import LocalResponseNorm

VARIANTS = ("paper", "owt", "small")

# Conv channel counts and conv1 geometry (kernel, stride) per variant.
_CHANNELS = {
    "paper": (96, 256, 384, 384, 256),
    "owt": (64, 192, 384, 256, 256),
    "small": (48, 128, 192, 192, 128),
}
_CONV1 = {"paper": (11, 4), "owt": (11, 4), "small": (5, 1)}
# small: ceil-mode pooling keeps the last partial window (28 -> 14 -> 7 -> 3 instead of
# 28 -> 13 -> 6 -> 2); at 55 -> 27 -> 13 -> 6 floor and ceil agree anyway.
_POOL_CEIL = {"paper": False, "owt": False, "small": True}
# Layers whose bias starts at 1 under the paper's init (§5): "gives the ReLUs positive
# inputs early on". conv6 (the "1 CNN*" extra layer) is treated like its tower-only peers.
_PAPER_BIAS_ONE = frozenset({"conv2", "conv4", "conv5", "conv6", "fc6", "fc7"})


@dataclasses.dataclass(frozen=True)
class Geometry:
    """Every shape the network derives from its config, computed before building it."""

    channels: tuple[int, int, int, int, int]
    conv1_kernel: int
    conv1_stride: int
    conv1_padding: int
    pool_kernel: int
    pool_stride: int
    pool_ceil: bool
    sizes: dict[str, int]  # spatial side after each stage
    fc6_in: int


def _conv_out(size: int, kernel: int, stride: int, padding: int) -> int:
    return (size + 2 * padding - kernel) // stride + 1


def _pool_out(size: int, kernel: int, stride: int, ceil: bool) -> int:
    if size < kernel:
        return 0
    return -(-(size - kernel) // stride) + 1 if ceil else (size - kernel) // stride + 1


def _stage_sizes(cfg: ModelConfig, size: int, pad1: int, pk: int, ps: int) -> dict[str, int]:
    k1, s1 = _CONV1[cfg.variant]
    ceil = _POOL_CEIL[cfg.variant]
    sizes = {"input": size}
    sizes["conv1"] = _conv_out(size, k1, s1, pad1)
    sizes["pool1"] = _pool_out(sizes["conv1"], pk, ps, ceil)
    sizes["conv2"] = sizes["pool1"]  # 5x5 pad 2 keeps the side
    sizes["pool2"] = _pool_out(sizes["conv2"], pk, ps, ceil)
    sizes["conv3-5"] = sizes["pool2"]  # 3x3 pad 1 keep the side
    sizes["pool5"] = _pool_out(sizes["conv3-5"], pk, ps, ceil)
    return sizes


def geometry(cfg: ModelConfig) -> Geometry:
    """Shapes for a resolved config; raises ConfigError if any feature map would vanish."""
    cfg = cfg.resolved()
    if cfg.variant not in VARIANTS:
        raise ConfigError(f"unknown model variant {cfg.variant!r}; choose one of {list(VARIANTS)}")
    towers = cfg.towers or 1
    channels = tuple(
        max(towers, round(c * cfg.width / towers) * towers) for c in _CHANNELS[cfg.variant]
    )
    k1, s1 = _CONV1[cfg.variant]
    size = cfg.input_size or 224
    # paper: 224 + pad 2 (torchvision) or 227 + pad 0 (Caffe), both -> 55.
    pad1 = (0 if (size - k1) % s1 == 0 else 2) if cfg.variant == "paper" else 2
    pk, ps = (3, 2) if cfg.pooling == "overlapping" else (2, 2)
    sizes = _stage_sizes(cfg, size, pad1, pk, ps)
    if min(sizes.values()) < 1:
        smallest = next(
            s for s in range(1, 4096) if min(_stage_sizes(cfg, s, pad1, pk, ps).values()) >= 1
        )
        stage = next(k for k, v in sizes.items() if v < 1)
        raise ConfigError(
            f"model.input_size={size} is too small for variant {cfg.variant!r} with "
            f"{cfg.pooling} pooling: the feature map vanishes at {stage}; "
            f"allowed: input_size >= {smallest}"
        )
    side = 6 if cfg.variant == "owt" else sizes["pool5"]  # owt: adaptive 6x6 average pool
    kept = [
        c
        for name, c in zip(("conv3", "conv4", "conv5"), channels[2:], strict=True)
        if name not in cfg.drop_conv
    ]
    last = kept[-1] if kept else channels[1]  # channels reaching pool5
    return Geometry(
        channels, k1, s1, pad1, pk, ps, _POOL_CEIL[cfg.variant], sizes, last * side * side
    )  # type: ignore[arg-type]


def _activation(name: str) -> nn.Module:
    return nn.ReLU(inplace=True) if name == "relu" else nn.Tanh()


class AlexNet(nn.Module):
    """The network of §3. Build it with :func:`build_model` or ``AlexNet(ModelConfig(...))``."""

    def __init__(self, cfg: ModelConfig | None = None) -> None:
        super().__init__()
        cfg = (cfg or ModelConfig()).resolved()
        geo = geometry(cfg)
        self.cfg, self.geo = cfg, geo
        c1, c2, c3, c4, c5 = geo.channels
        g = cfg.towers or 1
        bn = cfg.norm == "batchnorm"

        def conv(cin: int, cout: int, k: int, s: int, p: int, groups: int) -> nn.Conv2d:
            return Conv2d(cin, cout, k, stride=s, padding=p, groups=groups, impl=cfg.conv_impl)

        def lrn() -> nn.Module:
            if cfg.norm != "lrn":
                return nn.Identity()
            # Each tower normalises its own kernel maps (the paper ran one tower per GPU).
            return LocalResponseNorm(5, 1e-4, 0.75, 2.0, alpha_convention=cfg.lrn_alpha, groups=g)

        def bnorm(c: int) -> nn.Module:
            return nn.BatchNorm2d(c) if bn else nn.Identity()

        def pool() -> nn.MaxPool2d:  # §3.4: 3/2 overlapping, or 2/2 as the ablation
            return nn.MaxPool2d(geo.pool_kernel, geo.pool_stride, ceil_mode=geo.pool_ceil)

        # conv1 sees all input channels (no towers yet).
        self.conv1 = conv(
            cfg.in_channels, c1, geo.conv1_kernel, geo.conv1_stride, geo.conv1_padding, 1
        )
        self.bn1, self.act1, self.norm1, self.pool1 = (
            bnorm(c1),
            _activation(cfg.activation),
            lrn(),
            pool(),
        )
        # conv2: each tower sees only its own half of conv1's maps (groups = towers).
        self.conv2 = conv(c1, c2, 5, 1, 2, g)
        self.bn2, self.act2, self.norm2, self.pool2 = (
            bnorm(c2),
            _activation(cfg.activation),
            lrn(),
            pool(),
        )
        # conv3 sees both towers; conv4/conv5 their own tower. Optionally removed (§7).
        cin = c2
        self.conv3 = self.bn3 = self.act3 = None
        if "conv3" not in cfg.drop_conv:
            self.conv3, self.bn3, self.act3 = (
                conv(cin, c3, 3, 1, 1, 1),
                bnorm(c3),
                _activation(cfg.activation),
            )
            cin = c3
        self.conv4 = self.bn4 = self.act4 = None
        if "conv4" not in cfg.drop_conv:
            self.conv4, self.bn4, self.act4 = (
                conv(cin, c4, 3, 1, 1, g if cin % g == 0 else 1),
                bnorm(c4),
                _activation(cfg.activation),
            )
            cin = c4
        self.conv5 = self.bn5 = self.act5 = None
        if "conv5" not in cfg.drop_conv:
            self.conv5, self.bn5, self.act5 = (
                conv(cin, c5, 3, 1, 1, g if cin % g == 0 else 1),
                bnorm(c5),
                _activation(cfg.activation),
            )
            cin = c5
        self.pool5 = pool()
        # §6 "1 CNN*": an extra conv layer over the last pooling layer.
        self.conv6 = self.bn6 = self.act_conv6 = None
        if cfg.extra_conv6:
            self.conv6, self.bn6, self.act_conv6 = (
                conv(cin, cin, 3, 1, 1, g),
                bnorm(cin),
                _activation(cfg.activation),
            )
        self.avgpool = nn.AdaptiveAvgPool2d(6) if cfg.variant == "owt" else nn.Identity()
        # Fully connected layers see both towers. Dropout (§4.2) on the outputs of fc6 and
        # fc7 (paper, Caffe); owt keeps torchvision's placement on their inputs.
        self.dropout_on = "inputs" if cfg.variant == "owt" else "outputs"
        fw = cfg.fc_width or 4096
        self.fc6, self.act6, self.drop6 = (
            nn.Linear(geo.fc6_in, fw),
            _activation(cfg.activation),
            nn.Dropout(cfg.dropout),
        )
        self.fc7, self.act7, self.drop7 = (
            nn.Linear(fw, fw),
            _activation(cfg.activation),
            nn.Dropout(cfg.dropout),
        )
        self.fc8 = nn.Linear(fw, cfg.num_classes)
        self.reset_parameters()

    # ----------------------------------------------------------------------------------
    def named_layers(self) -> Iterator[tuple[str, nn.Module]]:
        """The learned layers by their paper names: conv1..conv5 (conv6), fc6..fc8."""
        for name in ("conv1", "conv2", "conv3", "conv4", "conv5", "conv6", "fc6", "fc7", "fc8"):
            layer = getattr(self, name)
            if layer is not None:
                yield name, layer

    def reset_parameters(self) -> None:
        init = self.cfg.init
        for name, layer in self.named_layers():
            if init == "torch":
                layer.reset_parameters()
            elif init == "paper":
                # §5: "zero-mean Gaussian with standard deviation 0.01"; biases 1 in conv2,
                # conv4, conv5 and the hidden fc layers, 0 elsewhere.
                nn.init.normal_(layer.weight, 0.0, 0.01)
                nn.init.constant_(
                    layer.bias, self.cfg.init_bias if name in _PAPER_BIAS_ONE else 0.0
                )
            else:  # kaiming: He-normal for every ReLU layer, a small fc8
                if name == "fc8":
                    nn.init.normal_(layer.weight, 0.0, 0.01)
                else:
                    nn.init.kaiming_normal_(layer.weight, mode="fan_in", nonlinearity="relu")
                nn.init.zeros_(layer.bias)

    # ----------------------------------------------------------------------------------
    def _check_input(self, x: Tensor) -> None:
        if x.dim() != 4 or x.shape[1] != self.cfg.in_channels:
            raise ValueError(
                f"expected input of shape (N, {self.cfg.in_channels}, H, W), got {tuple(x.shape)}; "
                f"this model was built with in_channels={self.cfg.in_channels}"
            )
        size = self.cfg.input_size
        if self.cfg.variant != "owt" and (x.shape[2] != size or x.shape[3] != size):
            raise ValueError(
                f"expected {size}x{size} inputs for this {self.cfg.variant!r} model, got "
                f"{x.shape[2]}x{x.shape[3]}; build it with model.input_size={x.shape[2]} or resize"
            )

    def forward_conv(self, x: Tensor) -> Tensor:
        """Convolutional stages; shapes for the paper variant at 224 px, batch N."""
        self._check_input(x)
        x = self.pool1(
            self.norm1(self.act1(self.bn1(self.conv1(x))))
        )  # (N, 96, 55, 55) -> (N, 96, 27, 27)
        x = self.pool2(
            self.norm2(self.act2(self.bn2(self.conv2(x))))
        )  # (N, 256, 27, 27) -> (N, 256, 13, 13)
        if self.conv3 is not None:
            x = self.act3(self.bn3(self.conv3(x)))  # (N, 384, 13, 13)
        if self.conv4 is not None:
            x = self.act4(self.bn4(self.conv4(x)))  # (N, 384, 13, 13)
        if self.conv5 is not None:
            x = self.act5(self.bn5(self.conv5(x)))  # (N, 256, 13, 13)
        x = self.pool5(x)  # (N, 256, 6, 6)
        if self.conv6 is not None:
            x = self.act_conv6(self.bn6(self.conv6(x)))  # (N, 256, 6, 6)
        return self.avgpool(x)

    def forward_features(self, x: Tensor) -> Tensor:
        """The last hidden layer: fc7 after its activation, (N, 4096). Used for retrieval (§6.1)."""
        x = torch.flatten(self.forward_conv(x), 1)  # (N, 9216)
        if self.dropout_on == "inputs":
            return self.act7(self.fc7(self.drop7(self.act6(self.fc6(self.drop6(x))))))
        return self.act7(self.fc7(self.drop6(self.act6(self.fc6(x)))))  # (N, 4096)

    def forward_head(self, features: Tensor) -> Tensor:
        """fc7 features -> class scores (N, num_classes); softmax is in the loss."""
        if self.dropout_on == "outputs":
            features = self.drop7(features)
        return self.fc8(features)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))


def build_model(cfg: ModelConfig | None = None, **overrides: Any) -> AlexNet:
    """``build_model(variant="small", in_channels=1, num_classes=10)``."""
    cfg = cfg or ModelConfig()
    if overrides:
        if "variant" in overrides and overrides["variant"] not in VARIANTS:
            raise ConfigError(
                f"unknown model variant {overrides['variant']!r}; choose one of {list(VARIANTS)}"
            )
        cfg = dataclasses.replace(cfg, **overrides)
    return AlexNet(cfg)


# --------------------------------------------------------------------------------------
# torchvision interoperability (owt)

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


def to_torchvision_state_dict(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """An ``owt`` state_dict in torchvision's key names (loads with strict=True)."""
    out = {}
    for key, value in state.items():
        layer, _, param = key.partition(".")
        if layer not in _TORCHVISION_KEYS:
            raise KeyError(f"{key} has no torchvision counterpart (only owt models convert)")
        out[f"{_TORCHVISION_KEYS[layer]}.{param}"] = value
    return out


def from_torchvision_state_dict(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """torchvision AlexNet weights (e.g. alexnet-owt-7be5be79.pth) in our ``owt`` names."""
    reverse = {v: k for k, v in _TORCHVISION_KEYS.items()}
    out = {}
    for key, value in state.items():
        prefix, _, param = key.rpartition(".")
        if prefix not in reverse:
            raise KeyError(f"{key} is not a torchvision AlexNet parameter")
        out[f"{reverse[prefix]}.{param}"] = value
    return out


def is_torchvision_state_dict(state: dict[str, Any]) -> bool:
    return any(k.startswith(("features.", "classifier.")) for k in state)
