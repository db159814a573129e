"""AlexNet as in Krizhevsky, Sutskever & Hinton (NIPS 2012), plus two relatives.

Variants
  paper  the 2012 network (§3, Figure 2): 96/256/384/384/256 kernels, the two GPU "towers"
         as groups=2 in conv2, conv4 and conv5, LRN after the ReLUs of conv1 and conv2,
         overlapping 3/2 max-pooling, dropout 0.5 on the outputs of fc6 and fc7.
         60,965,224 parameters with 1000 classes.
  owt    torchvision's "one weird trick" network: 64/192/384/256/256 kernels, no LRN, no
         groups, adaptive 6x6 average pool, dropout on the inputs of fc6 and fc7.
         61,100,840 parameters; its weights convert to and from torchvision's exactly
         (:mod:`alexnet.network.convert`).
  small  the same layer types and order for 28-32 px images (CIFAR-10, Fashion-MNIST):
         conv1 is 5x5 stride 1, half the kernels, 1024-wide fc6/fc7.

Input size (paper): 224x224. 11x11 stride-4 windows fit 54 times in 224 pixels; the
authors' cuda-convnet rounds up to 55 without padding (its last window reads 3 pixels of
zeros on the right and bottom only). We pad 2 on every side (torchvision's choice: the
same 55x55, windows shifted by 2 pixels); ``input_size=227`` (Caffe's) switches conv1 to
padding 0. All give the paper's 55x55.

Layout: every layer is an attribute with its paper name (``conv1``, ``bn1``, ``act1``,
``norm1``, ``pool1``, ..., ``fc6``, ``act6``, ``drop6``, ..., ``fc8``), so state_dict keys
read ``conv1.weight``; a layer the config leaves out is simply not there. Figure 2's
stages group them: :attr:`AlexNet.conv_blocks` and :attr:`AlexNet.fc_blocks` list each
stage's layer names in the order they run.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor, nn

from ..config import ConfigError, ModelConfig
from .fourier import Conv2d
from .lrn import LocalResponseNorm


@dataclasses.dataclass(frozen=True)
class Variant:
    """What differs between the networks; the order of the layers is Figure 2's in all."""

    channels: tuple[int, int, int, int, int]  # conv1..conv5 kernels at width 1
    conv1: tuple[int, int]  # conv1's kernel side and stride
    # Ceil-mode pooling keeps the last partial window (small: 28 -> 14 -> 7 -> 3 instead of
    # 28 -> 13 -> 6 -> 2); at 55 -> 27 -> 13 -> 6 floor and ceil agree anyway.
    pool_ceil: bool
    avgpool: bool  # torchvision's adaptive 6x6 average pool between pool5 and fc6
    # §4.2: the fc layers whose inputs dropout zeroes (drop6, then drop7). fc7 and fc8 are
    # the paper's (and Caffe's) "outputs of fc6 and fc7"; torchvision drops the inputs of
    # fc6 and fc7 instead.
    dropout_before: tuple[str, str]


VARIANTS = {
    "paper": Variant(
        channels=(96, 256, 384, 384, 256),
        conv1=(11, 4),
        pool_ceil=False,
        avgpool=False,
        dropout_before=("fc7", "fc8"),
    ),
    "owt": Variant(
        channels=(64, 192, 384, 256, 256),
        conv1=(11, 4),
        pool_ceil=False,
        avgpool=True,
        dropout_before=("fc6", "fc7"),
    ),
    "small": Variant(
        channels=(48, 128, 192, 192, 128),
        conv1=(5, 1),
        pool_ceil=True,
        avgpool=False,
        dropout_before=("fc7", "fc8"),
    ),
}

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
    conv_out: int  # channels of the last conv layer kept (into pool5 and conv6)
    fc6_in: int


def _conv_out(size: int, kernel: int, stride: int, padding: int) -> int:
    return (size + 2 * padding - kernel) // stride + 1


def _pool_out(size: int, kernel: int, stride: int, ceil: bool) -> int:
    if size < kernel:
        return 0
    return -(-(size - kernel) // stride) + 1 if ceil else (size - kernel) // stride + 1


def _stage_sizes(cfg: ModelConfig, size: int, pad1: int, pk: int, ps: int) -> dict[str, int]:
    variant = VARIANTS[cfg.variant]
    k1, s1 = variant.conv1
    ceil = variant.pool_ceil
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
    variant = VARIANTS[cfg.variant]
    towers = cfg.towers or 1
    channels = tuple(max(towers, round(c * cfg.width / towers) * towers) for c in variant.channels)
    k1, s1 = variant.conv1
    size = cfg.input_size or 224
    # paper: 224 + pad 2 (torchvision) or 227 + pad 0 (Caffe), both -> 55 like cuda-convnet's
    # 224 rounded up.
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
    side = 6 if variant.avgpool else sizes["pool5"]
    kept = [
        c
        for name, c in zip(("conv3", "conv4", "conv5"), channels[2:], strict=True)
        if name not in cfg.drop_conv
    ]
    last = kept[-1] if kept else channels[1]
    return Geometry(
        channels=channels,  # type: ignore[arg-type]
        conv1_kernel=k1,
        conv1_stride=s1,
        conv1_padding=pad1,
        pool_kernel=pk,
        pool_stride=ps,
        pool_ceil=variant.pool_ceil,
        sizes=sizes,
        conv_out=last,
        fc6_in=last * side * side,
    )


@dataclasses.dataclass(frozen=True)
class ConvStage:
    """One convolutional stage of Figure 2: conv -> [bn] -> act -> [lrn] -> [pool].

    Its layers are named by ``n``: conv{n}, bn{n}, act{n}, norm{n}, pool{n} (conv6's
    activation is ``act_conv6``: ``act6`` is fc6's)."""

    n: int
    kernels: int
    kernel: int
    stride: int
    padding: int
    own_tower: bool  # §3.2: sees only its own tower's maps (groups = towers)
    lrn: bool = False  # §3.3: LRN after the activation, when model.norm is lrn
    pool: bool = False  # §3.4: max-pooling after it


def conv_stages(cfg: ModelConfig, geo: Geometry) -> list[ConvStage]:
    """Figure 2's convolutional stages in the order they run; shapes: paper at 224 px."""
    c1, c2, c3, c4, c5 = geo.channels
    k1, s1, p1 = geo.conv1_kernel, geo.conv1_stride, geo.conv1_padding
    stages = [
        # sees the whole image: (N, 3, 224, 224) -> (N, 96, 55, 55) -> pool1 (N, 96, 27, 27)
        ConvStage(1, c1, k1, s1, p1, own_tower=False, lrn=True, pool=True),
        # each tower sees its half of conv1's maps: (N, 256, 27, 27) -> pool2 (N, 256, 13, 13)
        ConvStage(2, c2, 5, 1, 2, own_tower=True, lrn=True, pool=True),
        # sees both towers: (N, 384, 13, 13)
        ConvStage(3, c3, 3, 1, 1, own_tower=False),
        # (N, 384, 13, 13)
        ConvStage(4, c4, 3, 1, 1, own_tower=True),
        # (N, 256, 13, 13) -> pool5 (N, 256, 6, 6)
        ConvStage(5, c5, 3, 1, 1, own_tower=True, pool=True),
    ]
    if cfg.extra_conv6:  # §6 "1 CNN*": a sixth conv layer over pool5, (N, 256, 6, 6)
        stages.append(ConvStage(6, geo.conv_out, 3, 1, 1, own_tower=True))
    return stages


class PaperDropout(nn.Module):
    """§4.2 as printed: in training each output is zeroed with probability p and the rest
    pass unchanged; "at test time, we use all the neurons but multiply their outputs by
    0.5" (1 - p). The same test-time function as nn.Dropout's inverted form, but the next
    layer trains on inputs half as large, as the authors' did (see ModelConfig.dropout_form)."""

    def __init__(self, p: float = 0.5) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: Tensor) -> Tensor:
        if not self.training:
            return x * (1.0 - self.p)
        if self.p == 0:
            return x
        return x * torch.empty_like(x).bernoulli_(1.0 - self.p)

    def extra_repr(self) -> str:
        return f"p={self.p}, test-time scale {1.0 - self.p:g}"


def _hooked(*modules: nn.Module) -> bool:
    """Any hooks on these modules, forward or backward, or global ones: fused layers never
    run one by one, so no layer's hooks would be called."""
    g = nn.modules.module
    if (
        g._global_forward_hooks
        or g._global_forward_pre_hooks
        or g._global_backward_hooks
        or g._global_backward_pre_hooks
    ):
        return True
    return any(
        m._forward_hooks or m._forward_pre_hooks or m._backward_hooks or m._backward_pre_hooks
        for m in modules
    )


def _fused(layers: list[nn.Module], x: Tensor) -> tuple[Tensor, int] | None:
    """Run the longest of ReLU -> LRN -> max-pool, ReLU -> LRN and LRN -> max-pool at the
    head of ``layers`` that the native kernels take as one op; returns the output and how
    many layers it covered, or None (run layers[0] alone)."""
    # Exact types: a subclass may compute something else in its own forward.
    relu = type(layers[0]) is nn.ReLU
    at = 1 if relu else 0
    if len(layers) <= at or type(norm := layers[at]) is not LocalResponseNorm:
        return None
    pool = layers[at + 1] if len(layers) > at + 1 else None
    if pool is not None and norm.fuses_pool(x, pool) and not _hooked(*layers[: at + 2]):
        return norm.pooled(x, pool, relu=relu), at + 2  # type: ignore[arg-type]
    if relu and norm.fuses_relu(x) and not _hooked(*layers[:2]):
        return norm(x, relu=True), 2
    return None


def _dropout(form: str, p: float) -> nn.Module:
    return PaperDropout(p) if form == "paper" else nn.Dropout(p)


def _activation(name: str) -> nn.Module:
    return nn.ReLU(inplace=True) if name == "relu" else nn.Tanh()


class AlexNet(nn.Module):
    """The network of §3. Build it with :func:`build_model` or ``AlexNet(ModelConfig(...))``."""

    def __init__(self, cfg: ModelConfig | None = None) -> None:
        super().__init__()
        cfg = (cfg or ModelConfig()).resolved()
        geo = geometry(cfg)
        variant = VARIANTS[cfg.variant]
        self.cfg, self.geo = cfg, geo
        # Figure 2's stages, each the names of its layers in the order they run.
        self.conv_blocks: dict[str, tuple[str, ...]] = {}
        self.fc_blocks: dict[str, tuple[str, ...]] = {}

        cin = cfg.in_channels
        for s in conv_stages(cfg, geo):
            n, cout = s.n, s.kernels
            layers: dict[str, nn.Module] = {}
            # §7's depth ablation removes the conv layer; its stage's pooling stays.
            if f"conv{n}" not in cfg.drop_conv:
                g = cfg.towers if s.own_tower else 1
                layers[f"conv{n}"] = Conv2d(
                    cin, cout, s.kernel, s.stride, s.padding, groups=g, impl=cfg.conv_impl
                )
                if cfg.norm == "batchnorm":
                    layers[f"bn{n}"] = nn.BatchNorm2d(cout)
                layers["act_conv6" if n == 6 else f"act{n}"] = _activation(cfg.activation)
                if s.lrn and cfg.norm == "lrn":
                    # Each tower normalises its own kernel maps (one tower per GPU in 2012).
                    groups = 1 if cfg.lrn_across_towers else cfg.towers
                    layers[f"norm{n}"] = LocalResponseNorm(
                        5, 1e-4, 0.75, cfg.lrn_k, alpha_convention=cfg.lrn_alpha, groups=groups
                    )
                cin = cout
            if s.pool:  # 3/2 overlapping, or 2/2 as the ablation
                layers[f"pool{n}"] = nn.MaxPool2d(
                    geo.pool_kernel, geo.pool_stride, ceil_mode=geo.pool_ceil
                )
            self._add_block(self.conv_blocks, f"conv{n}", layers)
        if variant.avgpool:  # (N, 256, 6, 6) whatever the input size
            self._add_block(self.conv_blocks, "avgpool", {"avgpool": nn.AdaptiveAvgPool2d(6)})

        # The fully connected layers see both towers: [dropout] -> fc -> [act].
        fw = cfg.fc_width
        drops = dict(zip(variant.dropout_before, ("drop6", "drop7"), strict=True))
        for name, fin, fout in (
            ("fc6", geo.fc6_in, fw),
            ("fc7", fw, fw),
            ("fc8", fw, cfg.num_classes),
        ):
            layers = {}
            if name in drops:
                layers[drops[name]] = _dropout(cfg.dropout_form, cfg.dropout)  # type: ignore[arg-type]
            layers[name] = nn.Linear(fin, fout)
            if name != "fc8":  # fc8 feeds the softmax, which is in the loss
                layers[f"act{name[2:]}"] = _activation(cfg.activation)
            self._add_block(self.fc_blocks, name, layers)
        self.reset_parameters()

    def _add_block(
        self, blocks: dict[str, tuple[str, ...]], name: str, layers: dict[str, nn.Module]
    ) -> None:
        """Register ``layers`` under their own names and list them as the block ``name``."""
        for key, layer in layers.items():
            self.add_module(key, layer)
        if layers:
            blocks[name] = tuple(layers)

    def _run(self, block: tuple[str, ...], x: Tensor) -> Tensor:
        i = 0
        while i < len(block):
            layers = [getattr(self, name) for name in block[i : i + 3]]
            fused = _fused(layers, x)
            if fused is not None:
                # [ReLU ->] LRN [-> max-pool] (§3.1, §3.3, §3.4) as one C pass each way: the
                # same bits, without the full-size tensors between them.
                x, used = fused
                i += used
            else:
                x = layers[0](x)
                i += 1
        return x

    # ----------------------------------------------------------------------------------
    def named_layers(self) -> Iterator[tuple[str, nn.Module]]:
        """The learned layers by their paper names: conv1..conv5 (conv6), fc6..fc8."""
        for name, layer in self.named_children():
            if isinstance(layer, nn.Conv2d | nn.Linear):
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
        """The convolutional stages (shapes in :func:`conv_stages`): (N, 256, 6, 6)."""
        self._check_input(x)
        for block in self.conv_blocks.values():
            x = self._run(block, x)
        return x

    def forward_features(self, x: Tensor) -> Tensor:
        """The last hidden layer: fc7 after its activation, (N, 4096). Used for retrieval (§6.1)."""
        x = torch.flatten(self.forward_conv(x), 1)  # (N, 9216)
        x = self._run(self.fc_blocks["fc6"], x)  # (N, 4096)
        return self._run(self.fc_blocks["fc7"], x)  # (N, 4096)

    def forward_head(self, features: Tensor) -> Tensor:
        """fc7 features -> class scores (N, num_classes); softmax is in the loss."""
        return self._run(self.fc_blocks["fc8"], features)

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
