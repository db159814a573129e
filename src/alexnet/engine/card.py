"""Model cards: what a weights file is, how it was trained, how well it does, and how to
make it again.

A card is a JSON-able dict (:func:`card_facts`) stored in every export's metadata (the
safetensors header's ``card``, ONNX's ``model_card`` property) and rendered as Markdown
(:func:`render_card`): ``MODEL_CARD.md`` in a run directory, ``<name>.MODEL_CARD.md``
beside an ``alexnet export``. A re-export carries the card of the file it came from.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
from pathlib import Path
from typing import Any

from .. import __version__
from ..atomic import atomic_path, names_a_folder
from ..data.preprocess import Preprocessing
from ..data.transforms import views_label
from .metrics import has_top5

PAPER = (
    "Krizhevsky, Sutskever, Hinton. ImageNet Classification with Deep Convolutional Neural "
    "Networks. NIPS 2012"
)


def card_facts(
    model_config: dict[str, Any], prep: Preprocessing, params: int, *,
    config: dict[str, Any] | None = None, results: dict[str, Any] | None = None,
    execution: dict[str, Any] | None = None, data: dict[str, Any] | None = None,
    source: str | None = None, reproduce: str | None = None,
) -> dict[str, Any]:  # fmt: skip
    """Everything a card says, from what a run or a weights file knows."""
    return {
        "model": {
            "variant": model_config.get("variant"),
            "parameters": params,
            "config": model_config,
            "input": f"{prep.crop}x{prep.crop}x{prep.channels} crops of {prep.image_size[0]}x"
            f"{prep.image_size[1]} images, {prep.normalize} normalisation, input scale "
            f"{prep.input_scale:g}",
            "classes": len(prep.classes) or model_config.get("num_classes"),
            "image_size": list(prep.image_size),
            "crop": prep.crop,
        },
        "data": data or {},
        "config": config,
        "results": results or {},
        "execution": execution or {},
        "source": source,
        "reproduce": reproduce,
        "alexnet_version": __version__,
        "created": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }


def card_from_checkpoint(
    state: dict[str, Any], prep: Preprocessing, params: int, where: str
) -> dict[str, Any]:
    """A card for a training checkpoint, from what it holds (config, best epoch, progress,
    execution record)."""
    cfg = state.get("config") or {}
    model_config = dict(cfg.get("model") or {})
    try:  # the settings the model ran with (None = the variant's default, resolved)
        from ..config import ModelConfig, from_dict

        model_config = dataclasses.asdict(from_dict(ModelConfig, model_config).resolved())
    except Exception:  # a config from another version: as saved
        pass
    best = state.get("best") or {}
    progress = state.get("progress") or {}
    epoch = progress.get("epoch") if not progress.get("batch") else None
    row = next((r for r in state.get("metrics") or [] if r.get("epoch") == epoch), {})
    results = {
        "weights_epoch": epoch,
        "weights_val_top1_error": row.get("val_top1_error"),
        "weights_val_top5_error": row.get("val_top5_error"),
        "best_val_top1_error": best.get("val_top1_error"),
        "best_val_top5_error": best.get("val_top5_error"),
        "best_epoch": best.get("epoch"),
        "epochs": progress.get("epoch"),
        "wall_seconds": progress.get("wall_seconds"),
        "val_views": (cfg.get("data") or {}).get("val_views", "center"),
    }
    data_path = (cfg.get("data") or {}).get("path")
    return card_facts(
        model_config, prep, params, config=cfg, results=results,
        execution=state.get("execution"), data={"path": data_path}, source=where,
        reproduce=_reproduce(data_path),
    )  # fmt: skip


def _reproduce(data_path: str | None) -> str:
    return (
        f"alexnet train --config config.yaml --data {data_path or 'DATA'} --out RUN_DIR "
        "(config.yaml: the resolved config below)"
    )


def epochs_text(n: Any) -> str:
    """'1 epoch', '30 epochs'."""
    return f"{n} epoch" + ("" if n == 1 else "s")


def _pct(v: Any) -> str:
    return "n/a" if v is None else f"{100 * float(v):.2f}%"


def render_card(card: dict[str, Any], weights: str) -> str:
    """The card as Markdown, for ``weights`` (the file it describes)."""
    m, r, d, ex = (
        card["model"],
        card.get("results") or {},
        card.get("data") or {},
        card.get("execution") or {},
    )
    cfg = card.get("config") or {}
    run, optim, sched, dcfg = (cfg.get(k) or {} for k in ("run", "optim", "schedule", "data"))
    views = r.get("val_views", "center")
    hw = m.get("image_size")
    protocol = views_label(views, tuple(hw[:2]) if hw else None, m.get("crop"))
    lines = [
        f"# Model card: AlexNet ({m['variant']})",
        "",
        f"Weights: `{weights}`. Made by alexnet {card.get('alexnet_version')} on {card.get('created')}"
        + (f" from `{card['source']}`." if card.get("source") else "."),
        "",
        "## Model",
        "",
        f"- Architecture: AlexNet, `{m['variant']}` variant ({PAPER}; `paper` is the 2012 network "
        "with LRN and the two towers as groups, `owt` torchvision's single-tower layout, `small` "
        "the 32 px variant).",
        f"- Parameters: {m['parameters']:,}; classes: {m['classes']}.",
        f"- Input: {m['input']}.",
        f"- Settings: {', '.join(f'{k}={v}' for k, v in sorted((m.get('config') or {}).items()))}.",
        "",
        "## Training data and recipe",
        "",
    ]
    if cfg:
        lines += [
            f"- Data: `{d.get('path') or dcfg.get('path')}`"
            + (f", {d['train_images']:,} training images" if d.get("train_images") else "")
            + (f", {d['val_images']:,} validation images" if d.get("val_images") else "")
            + ".",
            f"- {epochs_text(run.get('epochs'))} at batch {run.get('batch_size')}; SGD ({optim.get('form')} "
            f"form) lr {optim.get('lr')}, momentum {optim.get('momentum')}, weight decay "
            f"{optim.get('weight_decay')}; schedule {sched.get('kind')}.",
            f"- Augmentation: random {dcfg.get('crop')} px crops"
            + (" + mirrors" if dcfg.get("flip") else "")
            + (
                f", PCA colour noise alpha ~ N(0, {dcfg.get('pca_std')})"
                if dcfg.get("pca_std")
                else ""
            )
            + (f", padding {dcfg.get('pad')}" if dcfg.get("pad") else "")
            + (f", cutout {dcfg.get('cutout')} px" if dcfg.get("cutout") else "")
            + ".",
        ]
    else:
        lines.append("- Not recorded in this file.")
    lines += ["", "## Results", ""]
    mine, mine5, epoch = (
        r.get("weights_val_top1_error"),
        r.get("weights_val_top5_error"),
        r.get("weights_epoch"),
    )
    if mine is None and "weights_epoch" not in r and r.get("final_val_top1_error") is not None:
        # A card from before weights_* existed: it described the last epoch's weights.
        mine, mine5, epoch = (
            r["final_val_top1_error"],
            r.get("final_val_top5_error"),
            r.get("epochs"),
        )
    top5 = has_top5(m.get("classes"))

    def errors(top1: Any, top5_error: Any) -> str:
        if top5:
            return f"top-1 / top-5 error {_pct(top1)} / {_pct(top5_error)}"
        return f"top-1 error {_pct(top1)}"

    if mine is not None:  # the file's own weights lead; the best epoch may be other weights
        lines.append(
            f"- These weights (epoch {epoch}): validation {errors(mine, mine5)} ({protocol})."
        )
    if r.get("best_val_top1_error") is not None:
        if r.get("best_epoch") != epoch or mine is None:
            lines.append(
                f"- Best validation epoch: {r.get('best_epoch')}, "
                f"{errors(r.get('best_val_top1_error'), r.get('best_val_top5_error'))} "
                f"({protocol}; the run's best.safetensors holds those weights)."
            )
        lines.append(
            "- `alexnet evaluate WEIGHTS --data DATA --split test --views ten-crop` measures "
            "it on any prepared split."
        )
    elif not r.get("notes"):
        lines.append("- No validation result recorded.")
    lines += [f"- {note}" for note in r.get("notes") or []]
    lines += ["", "## Hardware and time", ""]
    if ex:
        where = ex.get("gpu") or ex.get("device_name") or ex.get("cpu") or ex.get("device")
        lines.append(
            f"- {ex.get('device')} ({where}), precision {ex.get('precision')}, "
            f"{ex.get('world_size', 1)} process(es), torch {ex.get('torch')}"
            + (
                f"; {r['epochs']} epochs in {float(r['wall_seconds']):.0f} s"
                if r.get("wall_seconds")
                else ""
            )
            + "."
        )
    else:
        lines.append("- Not recorded.")
    lines += [
        "",
        "## Intended use and limits",
        "",
        "- A reference implementation of the 2012 network and recipe, for study, reproduction "
        "and as a baseline or feature extractor (`alexnet features`). Its accuracy holds for "
        "images like its training data, preprocessed as above (the export carries the mean "
        "image and crop; `alexnet predict` applies them).",
        "- Not for decisions about people, safety-critical use or data unlike its training "
        "set: AlexNet is far from the state of the art, and it inherits its data's biases "
        "(ImageNet's classes and photographers, or whatever data it was trained on).",
        "",
        "## How to reproduce",
        "",
        f"    {card.get('reproduce') or 'not recorded'}",
    ]
    if cfg:
        import yaml

        lines += [
            "",
            "<details><summary>Resolved config</summary>",
            "",
            "```yaml",
            yaml.safe_dump(cfg, sort_keys=False).rstrip(),
            "```",
            "",
            "</details>",
        ]
    return "\n".join(lines) + "\n"


def write_card(card: dict[str, Any], path: str | Path, weights: str) -> Path:
    with atomic_path(path) as tmp:
        Path(tmp).write_text(render_card(card, weights))
    return Path(path)


def card_path_for(export: str | Path) -> Path:
    """Where ``alexnet export`` writes the card of ``export``: beside it, named after the
    whole file name (``m.onnx`` and ``m.safetensors`` each get their own)."""
    export = Path(export)
    return export.with_name(f"{export.name}.MODEL_CARD.md")


def check_outputs(paths: list[Path], force: bool) -> None:
    """An export never replaces a file silently: existing outputs need ``--force``; a
    directory in their place, or a missing parent directory, is an error up front."""
    for path in paths:
        if names_a_folder(path):
            raise ValueError(f"{path} is a directory; name a file to write")
        if not path.parent.is_dir():
            raise FileNotFoundError(f"{path.parent} does not exist; create it or write elsewhere")
        if path.exists() and not force:
            raise ValueError(f"{path} exists; pass --force to replace it")


def card_json(card: dict[str, Any]) -> str:
    return json.dumps(card, default=str)
