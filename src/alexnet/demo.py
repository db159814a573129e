"""``alexnet demo`` / ``make demo``: prepare Fashion-MNIST, train the small AlexNet with the
``demo`` preset, evaluate it on the 10,000 test images, print where everything is."""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from .config import load_train_config
from .data import LoaderSpec, Prepared, make_loader
from .evaluate import evaluate_model
from .model import build_model
from .prepare import prepare
from .train import format_summary, train


def run(
    out: str = "runs/demo", data_dir: str = "data/fashion-mnist", epochs: int | None = None
) -> int:
    t0 = time.time()
    out_path, data_path = Path(out), Path(data_dir)
    if not (data_path / "meta.json").is_file():
        print(f"preparing Fashion-MNIST into {data_path} ...", flush=True)
        prepare("fashion-mnist", data_path, progress=False)
    if out_path.exists() and any(out_path.iterdir()):
        old = out_path.with_name(f"{out_path.name}-{time.strftime('%Y%m%d-%H%M%S')}")
        out_path.rename(old)
        print(f"kept the previous demo run as {old}", flush=True)
    overrides = [f"data.path={data_path}"]
    if epochs:
        overrides.append(f"run.epochs={epochs}")
    cfg = load_train_config("demo", None, overrides)
    summary = train(cfg, out_path)
    # The test set: the 10,000 Fashion-MNIST test images, with the final weights.
    data = Prepared(data_path)
    state = torch.load(out_path / "checkpoint.pt", map_location="cpu", weights_only=True)
    model = build_model(cfg.model.__class__(**state["config"]["model"]))
    model.load_state_dict(state["model"])
    spec = LoaderSpec(
        crop=state["config"]["data"]["crop"], train=False, input_scale=cfg.data.input_scale
    )
    loader = make_loader(data, "val", spec, 500, torch.device("cpu"))
    test = evaluate_model(model, loader, torch.device("cpu"))
    result = {
        "test_images": test["images"],
        "test_accuracy": 1 - test["top1_error"],
        "test_top1_error": test["top1_error"],
        "test_top5_error": test["top5_error"],
        "train_seconds": summary["wall_seconds"],
        "total_seconds": time.time() - t0,
        "run_dir": str(out_path),
    }
    (out_path / "test.json").write_text(json.dumps(result, indent=2))
    print(format_summary(summary))
    print(
        f"Fashion-MNIST test set ({test['images']:,} images): accuracy {100 * result['test_accuracy']:.2f}% "
        f"(top-1 error {100 * test['top1_error']:.2f}%, top-5 error {100 * test['top5_error']:.2f}%)"
    )
    print(
        f"total time {result['total_seconds']:.0f} s; results: {out_path / 'test.json'}, {out_path / 'summary.json'}"
    )
    return 0
