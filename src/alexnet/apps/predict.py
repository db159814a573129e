"""``alexnet predict``: top-k labels with probabilities for image files and folders.

A file that cannot be read gets a per-file error in the output; the other files are still
predicted, and the exit status says that some failed.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

from ..atomic import atomic_path, write_json
from ..data.images import ImageError, image_to_array
from ..data.sources import IMAGE_EXTENSIONS
from ..engine.inference import LoadedModel, images_to_inputs, load_model
from ..engine.metrics import model_outputs
from ..progress import bar as progress_bar


def collect_files(inputs: list[str]) -> list[Path]:
    """Files as given, and every image-like file under given directories (sorted). Hidden
    names (``.DS_Store``, macOS's ``._photo.jpg``, ``.git/``) are passed over, as prepare does."""
    files: list[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            files += sorted(
                f
                for f in p.rglob("*")
                if f.is_file()
                and f.suffix.lower() in IMAGE_EXTENSIONS
                and not any(part.startswith(".") for part in f.relative_to(p).parts)
            )
        else:
            files.append(p)  # missing files are reported per file, not fatal
    return files


def predict_files(
    lm: LoadedModel,
    files: list[Path],
    top_k: int = 5,
    views: str = "center",
    batch_size: int = 32,
    progress: bool = True,
) -> list[dict[str, Any]]:
    """One result per file: {"path", "predictions": [{"class", "name", "index", "probability"}]}
    or {"path", "error"}."""
    k = min(top_k, len(lm.classes))
    results: list[dict[str, Any]] = []
    bar = progress_bar(len(files), "predict", enabled=progress and len(files) > 1)
    device = next(lm.model.parameters()).device
    for start in range(0, len(files), batch_size):
        chunk = files[start : start + batch_size]
        arrays, ok = [], []
        for f in chunk:
            try:
                if not f.is_file():
                    raise ImageError("no such file")
                arrays.append(image_to_array(f, lm.image_size))
                ok.append(f)
            except ImageError as err:
                results.append({"path": str(f), "error": str(err)})
        if arrays:
            batch = {"inputs": images_to_inputs(arrays, lm, views)}
            probs = next(model_outputs(lm.model, [batch], device))[0]
            top = probs.topk(k, dim=1)
            for f, p, i in zip(ok, top.values.tolist(), top.indices.tolist(), strict=True):
                preds = [
                    {"index": j, "class": lm.classes[j], "name": lm.names[j], "probability": q}
                    for q, j in zip(p, i, strict=True)
                ]
                results.append({"path": str(f), "predictions": preds})
        bar.update(len(chunk))
    bar.close()
    order = {str(f): n for n, f in enumerate(files)}
    return sorted(results, key=lambda r: order.get(r["path"], 0))


def format_table(results: list[dict[str, Any]]) -> str:
    lines = []
    for r in results:
        lines.append(r["path"])
        if "error" in r:
            lines.append(f"  error: {r['error']}")
            continue
        for p in r["predictions"]:
            bar = "#" * round(20 * p["probability"])
            lines.append(f"  {100 * p['probability']:6.2f}%  {bar:<20}  {p['name']}")
    return "\n".join(lines)


def write_outputs(
    results: list[dict[str, Any]], json_path: str | None, csv_path: str | None
) -> None:
    if json_path:
        write_json(json_path, results)
    if csv_path:
        with atomic_path(csv_path) as tmp, open(tmp, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["path", "rank", "index", "class", "name", "probability", "error"])
            for r in results:
                if "error" in r:
                    w.writerow([r["path"], "", "", "", "", "", r["error"]])
                    continue
                for rank, p in enumerate(r["predictions"], 1):
                    w.writerow(
                        [
                            r["path"],
                            rank,
                            p["index"],
                            p["class"],
                            p["name"],
                            f"{p['probability']:.6f}",
                            "",
                        ]
                    )


def run(
    weights: str, inputs: list[str], top_k: int, views: str, batch_size: int, device: str
) -> tuple[list[dict[str, Any]], int]:
    from ..engine.distributed import resolve_device

    lm = load_model(weights, resolve_device(device))
    files = collect_files(inputs)
    if not files:
        raise FileNotFoundError(f"no image files in {inputs}")
    results = predict_files(lm, files, top_k, views, batch_size)
    failed = sum("error" in r for r in results)
    return results, failed
