"""Does the paper's init (N(0, 0.01) weights, bias 1 in conv2/4/5, fc6/7) train?

Prepares the shared ImageNet samples (or --source DIR), then for init_bias 1 (the paper),
0.1 (Caffe) and 0: (a) per-layer activation std at init on real mean-subtracted 0..255
inputs, and how much fc8's output varies across images; (b) the training loss over a few
SGD steps of the paper's recipe on those images.

    .venv/bin/python scripts/paper-init-check.py [--source DIR] [--steps 20] [--batch 32]
"""

import argparse
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

from alexnet.config import load_train_config
from alexnet.data.dataset import LoaderSpec, Prepared, make_loader
from alexnet.data.prepare import prepare
from alexnet.engine.optim import build_optimizer
from alexnet.network.model import build_model

p = argparse.ArgumentParser()
p.add_argument(
    "--source", default=str(Path(__file__).resolve().parents[2] / "shared/data/imagenet-samples")
)
p.add_argument("--steps", type=int, default=20)
p.add_argument("--batch", type=int, default=32)
p.add_argument(
    "--limit", type=int, default=256, help="train on the first N images (a set the net can fit)"
)
args = p.parse_args()

with tempfile.TemporaryDirectory() as tmp:
    prepare(args.source, tmp, workers=2, progress=False)
    data = Prepared(tmp)
    cfg = load_train_config("imagenet-paper")
    for bias in (1.0, 0.1, 0.0):
        torch.manual_seed(0)
        model = build_model(
            variant="paper", num_classes=data.num_classes, init="paper", init_bias=bias
        )
        model = model.to(memory_format=torch.channels_last)
        loader = make_loader(
            data, "train", LoaderSpec(train=True), args.batch, torch.device("cpu"),
            data.preprocessing(224), workers=1,
        )  # fmt: skip
        loader.sampler.limit(args.limit)
        stats = {}
        hooks = [
            getattr(model, n).register_forward_hook(
                lambda m, i, o, n=n, s=stats: s.__setitem__(n, o.detach())
            )
            for n in ("conv1", "conv2", "conv5", "fc6", "fc7", "fc8")
        ]
        x, y = next(iter(loader))
        model.eval()
        with torch.no_grad():
            model(x)
        for h in hooks:
            h.remove()
        spread = stats["fc8"].std(0).mean().item()  # across images, per logit
        print(
            f"init_bias={bias}: activation std "
            + ", ".join(f"{k} {v.std().item():.3g}" for k, v in stats.items())
            + f"; fc8 spread across images {spread:.3g}"
        )
        model.train()
        opt = build_optimizer(model, cfg.optim)
        losses, t0, epoch, step = [], time.time(), 0, 0
        while step < args.steps:
            loader.sampler.set_epoch(epoch)
            for x, y in loader:
                loss = nn.functional.cross_entropy(model(x), y)
                opt.zero_grad()
                loss.backward()
                opt.step()
                losses.append(loss.item())
                step += 1
                if step >= args.steps:
                    break
            epoch += 1
        k = max(1, len(losses) // 5)
        print(
            f"  loss: first {sum(losses[:k]) / k:.3f} -> last {sum(losses[-k:]) / k:.3f} over {len(losses)} steps "
            f"({time.time() - t0:.0f} s)"
        )
