"""Where a training step's time goes: the paper's net next to torchvision's alexnet.

    python scripts/profile-step.py [--device cuda|cpu] [--batch N] [--precision bf16] [--rows 20]

Prints, per model, the kernels (GPU) or operators (CPU, self time) that take the most time
over a few profiled steps (channels_last, autocast, SGD), after warm-up steps that let cuDNN
choose its algorithms. On CPU the host memory is set up as the ``alexnet`` command does.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

from alexnet import allocator

allocator.configure()  # before torch allocates: as `alexnet train` and `benchmark` run

import torch  # noqa: E402
import torchvision  # noqa: E402
from torch import nn  # noqa: E402
from torch.profiler import ProfilerActivity, profile  # noqa: E402

from alexnet.network.model import build_model  # noqa: E402


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
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    ap.add_argument("--batch", type=int, help="default 512 on a GPU, 128 on CPU")
    ap.add_argument("--precision", default="bf16", choices=["bf16", "fp16", "fp32"])
    ap.add_argument("--rows", type=int, default=20)
    ap.add_argument("--steps", type=int, help="profiled steps (default 5 on a GPU, 2 on CPU)")
    args = ap.parse_args()
    cpu = args.device == "cpu"
    if not cpu and not torch.cuda.is_available():
        raise SystemExit("profile-step: no CUDA device here (use --device cpu)")
    if cpu and args.precision == "fp16":
        raise SystemExit("profile-step: fp16 autocast is for GPUs; use bf16 or fp32 on CPU")
    args.batch = args.batch or (128 if cpu else 512)
    args.steps = args.steps or (2 if cpu else 5)
    if args.batch < 1 or args.steps < 1:
        raise SystemExit("profile-step: --batch and --steps must be >= 1")
    torch.backends.cudnn.benchmark = True
    dev = torch.device(args.device)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}[args.precision]
    # Dense groups is a cuDNN question (its grouped kernels are slower); not asked on CPU.
    names = ("paper", "torchvision") if cpu else ("paper", "paper-dense-groups", "torchvision")
    for name in names:
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
            with torch.autocast(dev.type, dtype=dtype, enabled=dtype is not None):
                loss = nn.functional.cross_entropy(model(x).float(), y)  # noqa: B023
            opt.zero_grad(set_to_none=True)  # noqa: B023
            loss.backward()
            opt.step()  # noqa: B023

        if cpu:
            profile_cpu(name, step, args)
            continue
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


def profile_cpu(name: str, step: Callable[[], None], args: argparse.Namespace) -> None:
    for _ in range(2):  # warm-up: the heap, conv_impl's decisions, the native kernels' build
        step()
    t0 = time.perf_counter()
    for _ in range(args.steps):
        step()
    wall = (time.perf_counter() - t0) / args.steps * 1e3
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(args.steps):
            step()
    print(
        f"\n=== {name}: batch {args.batch}, {args.precision}, {torch.get_num_threads()} "
        f"threads, {wall:.0f} ms per step unprofiled ({args.batch / wall * 1e3:.1f} images/s); "
        f"profiled self CPU times below are totals over {args.steps} steps"
    )
    table = prof.key_averages().table(
        sort_by="self_cpu_time_total", row_limit=args.rows, max_name_column_width=60
    )
    print(table)


if __name__ == "__main__":
    main()
