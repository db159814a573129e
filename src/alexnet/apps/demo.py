"""``alexnet demo`` / ``make demo``: prepare Fashion-MNIST, train the small AlexNet with the
``demo`` preset, evaluate it on the 10,000 test images, write the run report, and print
where everything is."""

from __future__ import annotations

import time
from pathlib import Path

import torch

from ..atomic import write_json
from ..config import load_train_config
from ..data.dataset import Prepared, make_loader
from ..data.prepare import prepare
from ..data.transforms import views_label
from ..engine.inference import load_model
from ..engine.metrics import evaluate_model
from ..engine.train import format_summary, train


def run(
    out: str = "runs/demo",
    data_dir: str = "data/fashion-mnist",
    epochs: int | None = None,
    overrides: list[str] | None = None,
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
    settings = [f"data.path={data_path}", *(overrides or [])]
    if epochs:
        settings.append(f"run.epochs={epochs}")
    cfg = load_train_config("demo", None, settings)
    summary = train(cfg, out_path)

    # The test set: the 10,000 Fashion-MNIST test images, with the final weights, under
    # both of the paper's test protocols (§4.1: centre view, and 10 views averaged).
    data = Prepared(data_path)
    lm = load_model(out_path / "checkpoint.pt")
    scores = {}
    for views in ("center", "ten-crop"):
        loader = make_loader(data, "val", lm.loader_spec(views), 500, torch.device("cpu"), lm.prep)
        scores[views] = evaluate_model(lm.model, loader, torch.device("cpu"))
    ten, centre = scores["ten-crop"], scores["center"]
    result = {
        "test_images": ten["images"],
        "test_accuracy": 1 - ten["top1_error"],
        "test_top1_error": ten["top1_error"],
        "test_top5_error": ten["top5_error"],
        "test_views": "ten-crop",
        "test_accuracy_center": 1 - centre["top1_error"],
        "test_top1_error_center": centre["top1_error"],
        "test_top5_error_center": centre["top5_error"],
        "train_seconds": summary["wall_seconds"],
        "train_precision": summary["execution"]["precision"],
        "test_precision": "fp32",
        "train_and_test_seconds": time.time() - t0,
        "run_dir": str(out_path),
    }
    write_json(out_path / "test.json", result)
    print(format_summary(summary))
    print(
        f"Fashion-MNIST test set, {ten['images']:,} images:\n"
        f"  {views_label('ten-crop', data.image_size[:2], lm.prep.crop)}: accuracy "
        f"{100 * result['test_accuracy']:.2f}% (top-1 / top-5 error {100 * ten['top1_error']:.2f}% / "
        f"{100 * ten['top5_error']:.2f}%)\n"
        f"  centre view alone: accuracy {100 * result['test_accuracy_center']:.2f}%\n"
        f"trained in {result['train_precision']} ({summary['execution']['precision_reason']}), "
        f"tested in fp32\n"
        f"training and testing took {result['train_and_test_seconds']:.0f} s",
        flush=True,
    )
    from .report import build_report

    report = build_report(str(out_path), str(data_path))
    print(f"results: {out_path / 'test.json'}, {out_path / 'summary.json'}")
    print(f"report:  {report['html']}")
    print(f"run directory: {out_path}")
    return 0
