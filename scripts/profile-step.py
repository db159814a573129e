"""Where a training step's GPU time goes: the paper's net next to torchvision's alexnet.

    python scripts/profile-step.py [--batch 512] [--precision bf16] [--rows 20]

Prints, per model, the kernels that take the most CUDA time over a few profiled steps
(channels_last, autocast, SGD), after warm-up steps that let cuDNN choose its algorithms.
"""

from __future__ import annotations

import argparse

import torch
import torchvision
from torch import nn
from torch.profiler import ProfilerActivity, profile

from alexnet.network.model import build_model


def dense_groups(model: nn.Module) -> nn.Module:
    """Grouped convolutions as one dense convolution with a block-diagonal weight (the
    same outputs; twice the multiply-adds, but cuDNN's fastest kernels)."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d) and m.groups > 1:

            def forward(x: torch.Tensor, m: nn.Conv2d = m) -> torch.Tensor:
                g, co = m.groups, m.out_channels // m.groups
                ci = m.in_channels // g
                blocks = [
                    nn.functional.pad(
                        m.weight[i * co : (i + 1) * co], (0, 0, 0, 0, i * ci, (g - 1 - i) * ci)
                    )
                    for i in range(g)
                ]
                w = torch.cat(blocks).contiguous(memory_format=torch.channels_last)
                return nn.functional.conv2d(x, w, m.bias, m.stride, m.padding)

            m.forward = forward  # type: ignore[method-assign]
    return model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=512)
    ap.add_argument("--precision", default="bf16", choices=["bf16", "fp16", "fp32"])
    ap.add_argument("--rows", type=int, default=20)
    ap.add_argument("--steps", type=int, default=5)
    args = ap.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("profile-step: needs a CUDA device (it profiles GPU kernels)")
    torch.backends.cudnn.benchmark = True
    dev = torch.device("cuda")
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}[args.precision]
    for name in ("paper", "paper-dense-groups", "torchvision"):
        torch.manual_seed(0)
        if name == "torchvision":
            model = torchvision.models.alexnet()
        else:
            model = build_model(variant="paper")
            if name == "paper-dense-groups":
                model = dense_groups(model)
        model = model.to(dev, memory_format=torch.channels_last)
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        x = torch.randn(args.batch, 3, 224, 224, device=dev).contiguous(
            memory_format=torch.channels_last
        )
        y = torch.randint(0, 1000, (args.batch,), device=dev)

        def step() -> None:
            with torch.autocast("cuda", dtype=dtype, enabled=dtype is not None):
                loss = nn.functional.cross_entropy(model(x).float(), y)  # noqa: B023
            opt.zero_grad(set_to_none=True)  # noqa: B023
            loss.backward()
            opt.step()  # noqa: B023

        for _ in range(10):
            step()
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(args.steps):
                step()
            torch.cuda.synchronize()
        total = sum(e.self_device_time_total for e in prof.key_averages()) / args.steps / 1e3
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(20):
            step()
        end.record()
        torch.cuda.synchronize()
        wall = start.elapsed_time(end) / 20
        print(
            f"\n=== {name}: batch {args.batch}, {args.precision}, {total:.2f} ms of kernels per "
            f"step, {wall:.2f} ms per step ({args.batch / wall * 1e3:.0f} images/s)"
        )
        if name != "paper-dense-groups":
            table = prof.key_averages().table(
                sort_by="device_time_total", row_limit=args.rows, max_name_column_width=70
            )
            print(table)


if __name__ == "__main__":
    main()
