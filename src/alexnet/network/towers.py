"""The paper's two towers on two devices (§3.2): model parallelism as the 2012 network ran.

Each device holds one tower: half of the kernels of every conv layer and half of the
neurons of fc6 and fc7. The towers exchange activations only where the paper's do: the
input of conv3 and of every fully connected layer. Numerically this is the grouped
single-device :class:`~alexnet.network.model.AlexNet` (groups=2 in conv2, conv4, conv5; LRN within
each tower), and the weights convert both ways, so checkpoints stay in the grouped layout.
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn

from .model import AlexNet


def _split_conv(conv: nn.Conv2d, tower: int, own_input: bool) -> nn.Conv2d:
    """Tower ``tower``'s half of ``conv``'s kernels; ``own_input``: it sees its tower only."""
    out_half = conv.out_channels // 2
    in_ch = conv.in_channels // conv.groups if own_input else conv.in_channels
    part = nn.Conv2d(in_ch, out_half, conv.kernel_size, conv.stride, conv.padding)
    with torch.no_grad():
        part.weight.copy_(conv.weight[tower * out_half : (tower + 1) * out_half])
        part.bias.copy_(conv.bias[tower * out_half : (tower + 1) * out_half])
    return part


def _split_linear(fc: nn.Linear, tower: int) -> nn.Linear:
    half = fc.out_features // 2
    part = nn.Linear(fc.in_features, half)
    with torch.no_grad():
        part.weight.copy_(fc.weight[tower * half : (tower + 1) * half])
        part.bias.copy_(fc.bias[tower * half : (tower + 1) * half])
    return part


class Tower(nn.Module):
    def __init__(self, model: AlexNet, t: int) -> None:
        super().__init__()
        self.conv1 = _split_conv(model.conv1, t, own_input=False)  # sees the whole image
        self.conv2 = _split_conv(model.conv2, t, own_input=True)
        self.conv3 = _split_conv(model.conv3, t, own_input=False)  # sees both towers
        self.conv4 = _split_conv(model.conv4, t, own_input=True)
        self.conv5 = _split_conv(model.conv5, t, own_input=True)
        self.fc6 = _split_linear(model.fc6, t)  # sees both towers
        self.fc7 = _split_linear(model.fc7, t)
        self.act = type(model.act1)()
        self.norm = (
            model.norm1.__class__(**_lrn_kwargs(model.norm1))
            if hasattr(model, "norm1")
            else nn.Identity()
        )
        self.pool = nn.MaxPool2d(
            model.pool1.kernel_size, model.pool1.stride, ceil_mode=model.pool1.ceil_mode
        )
        self.drop = copy.deepcopy(model.drop6)  # the model's dropout form (paper or inverted)


def _lrn_kwargs(norm: nn.Module) -> dict:
    return {
        "size": norm.size,
        "alpha": norm.alpha,
        "beta": norm.beta,
        "k": norm.k,
        "alpha_convention": norm.alpha_convention,
    }


class TwoDeviceAlexNet(nn.Module):
    """A grouped paper-style AlexNet split into two towers on ``devices`` (output on the first)."""

    def __init__(self, model: AlexNet, devices: list[torch.device]) -> None:
        super().__init__()
        cfg = model.cfg
        if (
            cfg.towers != 2
            or cfg.norm == "batchnorm"
            or cfg.drop_conv
            or cfg.extra_conv6
            or cfg.variant == "owt"
        ):
            raise ValueError(
                "tower model parallelism needs the two-tower network as in the paper: towers=2, "
                "no batchnorm, no drop_conv, no extra_conv6, variant paper or small"
            )
        if len(devices) != 2:
            raise ValueError(f"tower model parallelism needs exactly two devices, got {devices}")
        self.devices = [torch.device(d) for d in devices]
        self.towers = nn.ModuleList([Tower(model, t).to(self.devices[t]) for t in range(2)])
        self.fc8 = nn.Linear(model.fc8.in_features, model.fc8.out_features).to(self.devices[0])
        with torch.no_grad():
            self.fc8.weight.copy_(model.fc8.weight)
            self.fc8.bias.copy_(model.fc8.bias)
        self.cfg = cfg

    def _exchange(self, parts: list[Tensor]) -> list[Tensor]:
        """Both towers' activations, concatenated along channels, on each device."""
        return [torch.cat([p.to(d) for p in parts], dim=1) for d in self.devices]

    def forward(self, x: Tensor) -> Tensor:
        h = []
        for tower, dev in zip(self.towers, self.devices, strict=True):
            y = x.to(dev)
            y = tower.pool(tower.norm(tower.act(tower.conv1(y))))  # (N, 48, 27, 27)
            y = tower.pool(tower.norm(tower.act(tower.conv2(y))))  # (N, 128, 13, 13)
            h.append(y)
        h = self._exchange(h)  # conv3 sees both towers: (N, 256, 13, 13) on each device
        f = []
        for tower, y in zip(self.towers, h, strict=True):
            y = tower.act(tower.conv3(y))  # (N, 192, 13, 13)
            y = tower.act(tower.conv4(y))  # (N, 192, 13, 13)
            y = tower.pool(tower.act(tower.conv5(y)))  # (N, 128, 6, 6)
            f.append(torch.flatten(y, 1))
        f = self._exchange(f)  # fc6 sees both towers: (N, 9216)
        f = self._exchange(
            [tower.drop(tower.act(tower.fc6(y))) for tower, y in zip(self.towers, f, strict=True)]
        )
        f = [tower.drop(tower.act(tower.fc7(y))) for tower, y in zip(self.towers, f, strict=True)]
        return self.fc8(torch.cat([p.to(self.devices[0]) for p in f], dim=1))  # (N, classes)

    def grouped_state_dict(self) -> dict[str, Tensor]:
        """The weights in the single-device grouped layout (what checkpoints store)."""
        out: dict[str, Tensor] = {}
        for name in ("conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7"):
            for param in ("weight", "bias"):
                out[f"{name}.{param}"] = torch.cat(
                    [getattr(getattr(t, name), param).detach().to("cpu") for t in self.towers],
                    dim=0,
                )
        out["fc8.weight"] = self.fc8.weight.detach().to("cpu")
        out["fc8.bias"] = self.fc8.bias.detach().to("cpu")
        return out
