"""Does the paper's recipe start training? The first SGD steps of the `imagenet-paper`
preset on real photos, step by step: loss, the share of fc6/fc7 units still alive (active
for at least one image of the batch) and the share of active outputs, gradient norms.

Source: 10 classes of real CIFAR-10 photos from the shared tarball (500 a class, upscaled
to 256 px by `alexnet prepare`, like ImageNet photos), or any folder with --source.

    .venv/bin/python scripts/first-steps.py [--steps 150] [--precision bf16|fp32]
        [--set model.dropout_form=inverted] [--set model.init_bias=0.1] [--source DIR]

The README's table ("The paper's recipe on real photos") comes from this script.
"""

import argparse
import contextlib
import math
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

from alexnet import allocator
from alexnet.config import load_train_config
from alexnet.data.dataset import LoaderSpec, Prepared, make_loader
from alexnet.data.prepare import prepare
from alexnet.engine.optim import build_optimizer
from alexnet.network.model import build_model

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from helpers import cifar10_jpeg_subset

p = argparse.ArgumentParser()
p.add_argument("--source", default=None, help="image folder (default: CIFAR-10 photos)")
p.add_argument("--steps", type=int, default=150)
p.add_argument("--every", type=int, default=25)
p.add_argument("--precision", default="bf16", choices=["bf16", "fp32"])
p.add_argument("--set", action="append", default=[], help="preset override, key=value")
p.add_argument("--seed", type=int, default=0)
args = p.parse_args()
allocator.configure()

with tempfile.TemporaryDirectory() as tmp:
    src = args.source or cifar10_jpeg_subset(Path(tmp) / "src", 500, 50)
    if src is None:
        sys.exit("no --source and no shared CIFAR-10 tarball on this machine")
    prepare(str(src), Path(tmp) / "prep", size=256, workers=2, progress=False)
    data = Prepared(Path(tmp) / "prep")
    cfg = load_train_config(
        "imagenet-paper", None, [f"model.num_classes={data.num_classes}", *args.set]
    )
    torch.manual_seed(args.seed)
    model = build_model(cfg.model).to(memory_format=torch.channels_last)
    loader = make_loader(
        data, "train", LoaderSpec(train=True, pca_std=cfg.data.pca_std), cfg.run.batch_size,
        torch.device("cpu"), data.preprocessing(224), workers=1, seed=args.seed,
    )  # fmt: skip
    opt = build_optimizer(model, cfg.optim)
    acts: dict[str, torch.Tensor] = {}
    for name in ("act6", "act7"):
        getattr(model, name).register_forward_hook(
            lambda m, i, o, n=name: acts.__setitem__(n, o.detach().float())
        )
    bf16 = args.precision == "bf16"
    autocast = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
    resolved = model.cfg
    print(
        f"# {data.num_classes} classes (ln C = {math.log(data.num_classes):.3f}), {args.precision}, "
        f"dropout {resolved.dropout_form}, init {resolved.init} (bias {resolved.init_bias}), "
        f"lr {cfg.optim.lr}, batch {cfg.run.batch_size}"
    )
    print("| step | loss | fc6 alive (active) | fc7 alive (active) | grad norm conv1 / fc7 / fc8 |")
    print("|---|---|---|---|---|")
    step, epoch, t0 = 0, 0, time.time()
    while step < args.steps:
        loader.sampler.set_epoch(epoch)
        for x, y in loader:
            with autocast:
                out = model(x)
            loss = nn.functional.cross_entropy(out.float(), y)
            opt.zero_grad()
            loss.backward()
            grads = [getattr(model, k).weight.grad.norm().item() for k in ("conv1", "fc7", "fc8")]
            opt.step()
            step += 1
            if step in (1, 2, 3) or step % args.every == 0:
                cols = [
                    f"{(a > 0).any(0).float().mean().item():.3f} ({(a > 0).float().mean().item():.3f})"
                    for a in (acts["act6"], acts["act7"])
                ]
                print(
                    f"| {step} | {loss.item():.3f} | {cols[0]} | {cols[1]} | "
                    + " / ".join(f"{g:.3g}" for g in grads)
                    + " |",
                    flush=True,
                )
            if step >= args.steps:
                break
        epoch += 1
    print(f"# {time.time() - t0:.0f} s")
