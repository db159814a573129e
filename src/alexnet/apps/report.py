"""``alexnet report RUN_DIR``: one self-contained HTML page (and a Markdown twin) for a run.

It leads with the result (test or validation accuracy with its protocol, training time,
hardware, the precision that ran), then the figures (training curves, conv1 filters, sample
predictions, nearest neighbours), then the environment, execution record and every metric,
with the full configuration folded away at the end. Figures are written to
``RUN_DIR/report/`` and embedded in the HTML as data URIs, so the page stands alone.
"""

from __future__ import annotations

import base64
import contextlib
import html
import json
from pathlib import Path
from typing import Any

import yaml

from ..atomic import write_text
from ..data.transforms import views_label
from ..engine.card import epochs_text
from ..engine.metrics import has_top5

FIGURES = ["Training curves", "conv1 filters", "Sample predictions", "Nearest neighbours"]
SECTIONS = ["Result", *FIGURES, "Environment", "Execution", "All metrics", "Configuration"]


def _duration(seconds: float) -> str:
    seconds = round(seconds)
    h, rem = divmod(seconds, 3600)
    if h:
        return f"{h} h {rem // 60:02d} min"
    return f"{rem // 60} min {rem % 60:02d} s" if rem >= 60 else f"{rem} s"


def _image_hw(data_dir: str) -> tuple[int, int] | None:
    """The prepared data's image size, if the data is still where the run found it."""
    from ..data.dataset import Prepared

    try:
        h, w, _ = Prepared(data_dir).image_size
        return h, w
    except Exception:  # moved or deleted: the protocol is named without it
        return None


def _unfinished_summary(run: Path) -> dict[str, Any]:
    """What a stopped or running run knows without summary.json: its metrics.csv rows and
    its checkpoint's execution record."""
    import csv

    out: dict[str, Any] = {"unfinished": True}
    path = run / "metrics.csv"
    rows = []
    if path.is_file():
        with open(path, newline="") as f:
            rows = [r for r in csv.DictReader(f) if r.get("epoch")]
    if rows:
        out["epochs"] = int(float(rows[-1]["epoch"]))
        out["wall_seconds"] = float(rows[-1].get("wall_seconds") or 0)
        scored = [r for r in rows if r.get("val_top1_error")]
        if scored:
            best = min(scored, key=lambda r: float(r["val_top1_error"]))
            out["best_val_top1_error"] = float(best["val_top1_error"])
            out["best_val_top5_error"] = float(best["val_top5_error"] or "nan")
            out["best_epoch"] = int(float(best["epoch"]))
    if (run / "checkpoint.pt").is_file():
        from ..engine.checkpoint import load_checkpoint

        with contextlib.suppress(ValueError):  # an unreadable checkpoint: no record
            out["execution"] = load_checkpoint(run / "checkpoint.pt").get("execution") or {}
    return out


def headline(cfg: dict[str, Any], summary: dict[str, Any], test: dict[str, Any]) -> dict[str, Any]:
    """The result in one line and its facts: the test set where the run was evaluated on
    one (``test.json``), else the best validation epoch, with the protocol that measured it;
    the training facts always."""
    ex = summary.get("execution") or {}
    data = (cfg.get("data") or {}).get("path", "?")
    hardware = ex.get("device_name") or ex.get("device") or summary.get("device", "?")
    took = (
        f"{epochs_text(summary.get('epochs', '?'))} in {_duration(summary.get('wall_seconds', 0))}"
    )
    if summary.get("unfinished"):
        took += " (unfinished: no summary.json yet)"
    precision = (
        f"{ex.get('precision', '?')} training ({ex.get('precision_reason', '')}), "
        f"{ex.get('eval_precision', 'fp32')} evaluation"
    )
    training = [
        ("training", took),
        (
            "hardware",
            f"{hardware} ({ex.get('device', '?')}), {ex.get('world_size', 1)} process(es)",
        ),
        ("precision", precision),
    ]
    top1 = top5 = None
    if test.get("test_top1_error") is not None:
        views = test.get("test_views", "center")
        n = test.get("test_images")
        what = f"test set ({n:,} images)" if isinstance(n, int) else "test set"
        top1, top5 = test["test_top1_error"], test.get("test_top5_error")
    elif summary.get("best_val_top1_error") is not None:
        views = (cfg.get("data") or {}).get("val_views", "center")
        n = summary.get("val_images")
        split = f"validation split ({n:,} images)" if n else "validation split"
        what = f"{split}, best epoch {summary.get('best_epoch')}"
        top1, top5 = summary["best_val_top1_error"], summary.get("best_val_top5_error")
    if top1 is None:
        return {"line": "no test or validation result recorded", "facts": training}
    crop = (cfg.get("data") or {}).get("crop") or (cfg.get("model") or {}).get("input_size")
    protocol = views_label(views, _image_hw(data), crop)
    errors = f"{100 * top1:.2f}% / " + (f"{100 * top5:.2f}%" if top5 is not None else "n/a")
    error_fact = ("top-1 / top-5 error", errors)
    if not has_top5((cfg.get("model") or {}).get("num_classes")):
        error_fact = ("top-1 error", f"{100 * top1:.2f}%")
    facts = [
        ("accuracy", f"{100 * (1 - top1):.2f}%"),
        error_fact,
        ("measured on", f"{what} of {data}; {protocol}"),
        *training,
    ]
    variant = (cfg.get("model") or {}).get("variant", "?")
    line = (
        f"{100 * (1 - top1):.2f}% top-1 accuracy on the {what.split(' (')[0].split(',')[0]} "
        f"({protocol}), {variant} net trained {took} on {hardware}, {ex.get('precision', '?')}"
    )
    return {"line": line, "facts": facts}


def _environment() -> dict[str, Any]:
    from ..engine.execution import machine_info

    return machine_info()


def _execution_rows(execution: dict[str, Any]) -> list[tuple[str, str]]:
    """summary.json's "execution" record as (key, value) rows; one row per conv layer."""
    rows = []
    for key, value in execution.items():
        if key in ("conv_impl", "eval_conv_impl") and isinstance(value, dict):
            label = "conv impl" if key == "conv_impl" else "eval conv impl"
            for layer, d in value.items():
                rows.append((f"{label}: {layer}", f"{d.get('impl')} ({d.get('reason', '')})"))
        else:
            rows.append((key, str(value)))
    return rows


def build_report(
    run_dir: str, data_dir: str | None = None, out: str | None = None
) -> dict[str, str]:
    from . import visualize as V

    run = Path(run_dir)
    if not (run / "config.yaml").is_file():
        raise FileNotFoundError(f"{run} is not a training run directory (no config.yaml)")
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    summary = (
        json.loads((run / "summary.json").read_text())
        if (run / "summary.json").is_file()
        else _unfinished_summary(run)
    )
    test = json.loads((run / "test.json").read_text()) if (run / "test.json").is_file() else {}
    weights = (
        run / "model.safetensors"
        if (run / "model.safetensors").is_file()
        else run / "checkpoint.pt"
    )
    data_dir = data_dir or cfg.get("data", {}).get("path")
    fig_dir = run / "report"
    figures: dict[str, str | None] = {}
    notes: dict[str, str] = {}

    def attempt(name: str, fn: Any) -> None:
        try:
            figures[name] = fn()[0]
        except (FileNotFoundError, ValueError, OSError) as err:
            figures[name] = None
            notes[name] = str(err)

    attempt("Training curves", lambda: V.curves(str(run), str(fig_dir / "curves")))
    attempt("conv1 filters", lambda: V.filters(str(weights), str(fig_dir / "filters")))
    if data_dir and (Path(data_dir) / "meta.json").is_file():
        attempt(
            "Sample predictions",
            lambda: V.predictions(str(weights), data_dir, str(fig_dir / "predictions")),
        )
        attempt(
            "Nearest neighbours",
            lambda: V.neighbors(str(weights), data_dir, str(fig_dir / "neighbors")),
        )
    else:
        for name in ("Sample predictions", "Nearest neighbours"):
            figures[name] = None
            notes[name] = f"prepared data not found ({data_dir}); pass --data DIR"
    env = _environment()
    execution = _execution_rows(summary.get("execution") or {}) or [
        ("not recorded", "this run's summary.json has no execution record")
    ]
    metrics = {k: v for k, v in {**summary, **test}.items() if not isinstance(v, (dict, list))}
    title = f"AlexNet run report — {run.name}"
    out_html = Path(out) if out else run / "report.html"
    out_md = out_html.with_suffix(".md")

    def fmt(key: str, value: Any) -> str:
        if isinstance(value, float):
            return (
                f"{100 * value:.2f}%" if ("error" in key or "accuracy" in key) else f"{value:.4g}"
            )
        return str(value)

    rows = [(k, fmt(k, v)) for k, v in metrics.items()]
    head = headline(cfg, summary, test)

    def table(pairs: list[tuple[str, str]]) -> str:
        cells = "".join(
            f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(str(v))}</td></tr>"
            for k, v in pairs
        )
        return f"<table>{cells}</table>"

    parts = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
        "<style>body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}"
        "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:3px 8px;text-align:left}"
        "img{max-width:100%;border:1px solid #eee}pre{background:#f6f6f6;padding:1em;overflow:auto}"
        ".headline{font-size:1.35em;background:#eef4fb;border-left:5px solid #2a6fb0;padding:.6em 1em}"
        "</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        "<h2 id='result'>Result</h2>",
        f"<p class='headline'>{html.escape(head['line'])}</p>",
        table(head["facts"]),
    ]
    md = [f"# {title}", "", "## Result", "", f"**{head['line']}**", "",
          *([ "| | |", "|---|---|", *[f"| {k} | {v} |" for k, v in head["facts"]], ""] if head["facts"] else [])]  # fmt: skip
    for name in FIGURES:
        anchor = name.lower().replace(" ", "-")
        parts.append(f"<h2 id='{anchor}'>{html.escape(name)}</h2>")
        md += [f"## {name}", ""]
        path = figures.get(name)
        if path:
            data = base64.b64encode(Path(path).read_bytes()).decode()
            parts.append(f"<img alt='{html.escape(name)}' src='data:image/png;base64,{data}'>")
            md += [
                f"![{name}]({Path(path).relative_to(out_md.parent) if Path(path).is_relative_to(out_md.parent) else path})",
                "",
            ]
        else:
            parts.append(
                f"<p><em>not drawn: {html.escape(notes.get(name, 'unavailable'))}</em></p>"
            )
            md += [f"*not drawn: {notes.get(name, 'unavailable')}*", ""]
    config_text = yaml.safe_dump(cfg, sort_keys=False)
    parts += [
        "<h2 id='environment'>Environment</h2>", table([(str(k), str(v)) for k, v in env.items()]),
        "<h2 id='execution'>Execution</h2>", table(execution),
        "<h2 id='all-metrics'>All metrics</h2>", table(rows),
        "<h2 id='configuration'>Configuration</h2>",
        f"<details><summary>the resolved config (config.yaml)</summary><pre>{html.escape(config_text)}</pre></details>",
    ]  # fmt: skip
    md += ["## Environment", "", "| key | value |", "|---|---|", *[f"| {k} | {v} |" for k, v in env.items()], "",
           "## Execution", "", "| key | value |", "|---|---|", *[f"| {k} | {v} |" for k, v in execution], "",
           "## All metrics", "", "| metric | value |", "|---|---|", *[f"| {k} | {v} |" for k, v in rows], "",
           "## Configuration", "", "<details><summary>the resolved config (config.yaml)</summary>", "",
           "```yaml", config_text.rstrip(), "```", "", "</details>", ""]  # fmt: skip
    parts.append("</body></html>")
    write_text(out_html, "\n".join(parts))
    write_text(out_md, "\n".join(md) + "\n")
    return {
        "html": str(out_html),
        "markdown": str(out_md),
        **{f"figure:{k}": str(v) for k, v in figures.items()},
    }
