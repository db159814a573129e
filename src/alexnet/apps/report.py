"""``alexnet report RUN_DIR``: one self-contained HTML page (and a Markdown twin) for a run.

Sections: configuration, environment, final metrics, training curves, conv1 filters,
sample predictions, nearest neighbours. Figures are written to ``RUN_DIR/report/`` and
embedded in the HTML as data URIs, so the page stands alone.
"""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path
from typing import Any

import yaml

from ..atomic import write_text

SECTIONS = [
    "Configuration",
    "Environment",
    "Execution",
    "Final metrics",
    "Training curves",
    "conv1 filters",
    "Sample predictions",
    "Nearest neighbours",
]


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
        json.loads((run / "summary.json").read_text()) if (run / "summary.json").is_file() else {}
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
    parts = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
        "<style>body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}"
        "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:3px 8px;text-align:left}"
        "img{max-width:100%;border:1px solid #eee}pre{background:#f6f6f6;padding:1em;overflow:auto}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        "<h2 id='configuration'>Configuration</h2>",
        f"<pre>{html.escape(yaml.safe_dump(cfg, sort_keys=False))}</pre>",
        "<h2 id='environment'>Environment</h2><table>",
        *[
            f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(str(v))}</td></tr>"
            for k, v in env.items()
        ],
        "</table><h2 id='execution'>Execution</h2><table>",
        *[f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in execution],
        "</table><h2 id='final-metrics'>Final metrics</h2><table>",
        *[f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in rows],
        "</table>",
    ]
    md = [f"# {title}", "", "## Configuration", "", "```yaml", yaml.safe_dump(cfg, sort_keys=False).rstrip(), "```", "",
          "## Environment", "", "| key | value |", "|---|---|", *[f"| {k} | {v} |" for k, v in env.items()], "",
          "## Execution", "", "| key | value |", "|---|---|", *[f"| {k} | {v} |" for k, v in execution], "",
          "## Final metrics", "", "| metric | value |", "|---|---|", *[f"| {k} | {v} |" for k, v in rows], ""]  # fmt: skip
    for name in SECTIONS[4:]:
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
    parts.append("</body></html>")
    write_text(out_html, "\n".join(parts))
    write_text(out_md, "\n".join(md) + "\n")
    return {
        "html": str(out_html),
        "markdown": str(out_md),
        **{f"figure:{k}": str(v) for k, v in figures.items()},
    }
