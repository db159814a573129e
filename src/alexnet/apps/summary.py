"""Per-layer table of a model: output shape, parameters, multiply-adds (``alexnet info``)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..network import native
from ..network.fourier import Conv2d, no_probe
from ..network.model import AlexNet


@dataclass
class LayerRow:
    name: str
    kind: str
    output_shape: tuple[int, ...]
    params: int
    macs: int
    # conv layers: how `conv_impl: auto` runs them on CPU in float32 by the cost model
    # ("fourier"/"direct"); training measures instead (alexnet.network.fourier), see summary.json.
    cpu_kernel: str = ""


def _macs(module: nn.Module, out: torch.Tensor) -> int:
    if isinstance(module, nn.Conv2d):
        k = module.kernel_size[0] * module.kernel_size[1]
        return out.numel() * (module.in_channels // module.groups) * k
    if isinstance(module, nn.Linear):
        return out.numel() * module.in_features
    return 0


def layer_table(model: AlexNet) -> list[LayerRow]:
    """Run one image through ``model`` and record every leaf layer in execution order."""
    rows: list[LayerRow] = []
    hooks = []
    for name, module in model.named_modules():
        if name and not list(module.children()):

            def hook(mod: nn.Module, inp: tuple, out: torch.Tensor, name: str = name) -> None:
                params = sum(p.numel() for p in mod.parameters())
                kernel = ""
                if isinstance(mod, Conv2d):
                    kernel = "fourier" if mod.uses_fourier(inp[0]) else "direct"
                elif isinstance(mod, nn.Conv2d):
                    kernel = "direct"
                rows.append(
                    LayerRow(
                        name,
                        type(mod).__name__,
                        tuple(out.shape[1:]),
                        params,
                        _macs(mod, out),
                        kernel,
                    )
                )

            hooks.append(module.register_forward_hook(hook))
    cfg = model.cfg
    size = cfg.input_size or 224
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), no_probe():
            model(torch.zeros(1, cfg.in_channels, size, size))
    finally:
        model.train(was_training)
        for h in hooks:
            h.remove()
    return rows


def summary_dict(model: AlexNet) -> dict:
    rows = layer_table(model)
    return {
        "variant": model.cfg.variant,
        "config": {k: v for k, v in vars(model.cfg).items()},
        "input_shape": [model.cfg.in_channels, model.cfg.input_size, model.cfg.input_size],
        "params": sum(p.numel() for p in model.parameters()),
        "macs": sum(r.macs for r in rows),
        "native": native.status(),
        "layers": [
            {
                "name": r.name,
                "type": r.kind,
                "output_shape": list(r.output_shape),
                "params": r.params,
                "macs": r.macs,
                "cpu_kernel": r.cpu_kernel,
            }
            for r in rows
        ],
    }


def format_summary(info: dict) -> str:
    head = (
        f"{'layer':<10} {'type':<18} {'output':>16} {'params':>12} {'mult-adds':>14}"
        "  CPU fp32 conv (predicted)"
    )
    lines = [
        f"AlexNet variant {info['variant']!r}, input {tuple(info['input_shape'])}",
        head,
        "-" * len(head),
    ]
    for r in info["layers"]:
        shape = "x".join(str(s) for s in r["output_shape"])
        params = f"{r['params']:,}" if r["params"] else ""
        macs = f"{r['macs']:,}" if r["macs"] else ""
        lines.append(
            f"{r['name']:<10} {r['type']:<18} {shape:>16} {params:>12} {macs:>14}"
            f"  {r.get('cpu_kernel', '')}".rstrip()
        )
    lines.append("-" * len(head))
    lines.append(f"{'total':<10} {'':<18} {'':>16} {info['params']:>12,} {info['macs']:>14,}")
    if "native" in info:
        lines.append(f"LRN on CPU: {info['native']}")
    lines.append(
        "conv_impl auto times both paths of a layer the first time it runs in fp32 on this "
        f"CPU (cached in {native._cache_dir()}); runs record each choice in summary.json"
    )
    return "\n".join(lines)
