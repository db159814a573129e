"""``alexnet predict``: top-k labels with probabilities for image files and folders.

A file that cannot be read gets a per-file error in the output; the other files are still
predicted, and the exit status says that some failed.
"""

from __future__ import annotations

import csv
import os
import unicodedata
from pathlib import Path
from typing import Any

from ..atomic import text_output, write_json
from ..data.images import ImageError, image_to_array
from ..data.sources import IMAGE_EXTENSIONS, walk_files
from ..engine.inference import LoadedModel, images_to_inputs, load_model
from ..engine.metrics import model_outputs
from ..progress import bar as progress_bar


def collect_files(inputs: list[str], problems: list[tuple[str, str]] | None = None) -> list[Path]:
    """Files as given, and every image-like file under given directories (sorted). Hidden
    names (``.DS_Store``, macOS's ``._photo.jpg``, ``.git/``) are passed over, as prepare
    does. Symlinks are followed; broken ones with an image name are kept (each gets its
    error in place), and folders that cannot be read are added to ``problems``."""
    files: list[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            found = walk_files(p, problems if problems is not None else [], broken_too=True)
            files += [f for f in found if f.suffix.lower() in IMAGE_EXTENSIONS]
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
                    raise ImageError(
                        f"broken symlink (to {os.readlink(f)})"
                        if f.is_symlink() and not f.exists()
                        else "not a regular file"
                        if f.exists()
                        else "no such file"
                    )
                arrays.append(image_to_array(f, lm.image_size))
                ok.append(f)
            except ImageError as err:
                results.append({"path": str(f), "error": str(err)})
            except OSError as err:  # e.g. a folder on the way that cannot be entered
                results.append({"path": str(f), "error": err.strerror or str(err)})
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


# Control and format characters (bidi overrides, zero widths), undecodable bytes, line breaks.
_UNSHOWN = {"Cc", "Cf", "Cs", "Zl", "Zp"}


def shown(text: str) -> str:
    """A file name (or a message holding one) as one line that a terminal prints as it is:
    control and format characters, line separators and undecodable bytes escaped
    (``\\n``, ``\\u202e``, ``\\udcff``) and backslashes doubled, so no two names look alike."""
    if "\\" not in text and not any(unicodedata.category(c) in _UNSHOWN for c in text):
        return text
    return "".join(
        "\\\\" if c == "\\" else repr(c)[1:-1] if unicodedata.category(c) in _UNSHOWN else c
        for c in text
    )


def format_table(results: list[dict[str, Any]]) -> str:
    lines = []
    for r in results:
        lines.append(shown(r["path"]))
        if "error" in r:
            lines.append(f"  error: {shown(r['error'])}")
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
        with text_output(csv_path, newline="") as f:
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
    weights: str,
    inputs: list[str],
    top_k: int,
    views: str,
    batch_size: int,
    device: str,
    progress: bool = True,
) -> tuple[list[dict[str, Any]], int]:
    from ..engine.distributed import resolve_device

    lm = load_model(weights, resolve_device(device))
    problems: list[tuple[str, str]] = []
    files = collect_files(inputs, problems)
    if not files and not problems:
        raise FileNotFoundError(f"no image files in {inputs}")
    results = predict_files(lm, files, top_k, views, batch_size, progress)
    results += [{"path": path, "error": why} for path, why in problems]
    failed = sum("error" in r for r in results)
    return results, failed
