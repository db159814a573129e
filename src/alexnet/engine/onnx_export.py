"""``alexnet export --format onnx``: a self-contained ONNX graph of a trained model.

The graph takes what ``alexnet prepare`` stores and ``alexnet predict`` feeds the model:
uint8 RGB images at the stored size, (N, H, W, C), any N. Inside it the preprocessing
contract runs (centre crop, mean image or torchvision's statistics, input scale: the one
:class:`~alexnet.data.preprocess.InputTransform`), then the network, and it returns the
logits and the softmax probabilities. The classes, names, model config and preprocessing
are in the model's metadata (``metadata_props``).

LRN exports as plain ONNX operators (its pointwise form,
:func:`~alexnet.network.lrn.lrn_pointwise`: pad, slices, sums, pow), per tower where the
model has towers: PyTorch's own ``local_response_norm`` does not export (an internal assert
in its exporter), and ONNX's ``LRN`` operator has no groups. Convolutions export as
ONNX ``Conv`` whatever ``conv_impl`` chose on this machine.
"""

from __future__ import annotations

import contextlib
import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ..atomic import atomic_path
from ..data.preprocess import InputTransform
from ..network import lrn
from ..network.fourier import Conv2d
from .inference import LoadedModel

OPSET = 20  # ONNX 1.15 (2023): onnxruntime >= 1.17, TensorRT 10
MIN_OPSET = 18  # the exporter's own minimum (older ones are converted, not all ops can be)


class ExportError(ValueError):
    """An export that cannot be made, with the reason in words."""


class _WithPreprocessing(nn.Module):
    def __init__(self, lm: LoadedModel) -> None:
        super().__init__()
        self.model = lm.model
        self.transform = InputTransform(lm.prep, torch.device("cpu"))

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        logits = self.model(self.transform(images, "center").contiguous())
        return logits, torch.softmax(logits, dim=1)


@contextlib.contextmanager
def _exportable(model: nn.Module) -> Iterator[None]:
    """PyTorch's conv kernels (not the CPU Fourier path) and LRN's pointwise form, for
    the duration of the export."""
    convs = [m for m in model.modules() if isinstance(m, Conv2d)]
    impls = [m.impl for m in convs]
    for m in convs:
        m.impl = "direct"
    try:
        with lrn.pointwise_only():
            yield
    finally:
        for m, impl in zip(convs, impls, strict=True):
            m.impl = impl


def _require(module: str) -> Any:
    try:
        return __import__(module)
    except ImportError:
        raise ExportError(
            f"ONNX export needs the {module!r} package: pip install 'alexnet[onnx]' "
            "(onnx, onnxscript, onnxruntime)"
        ) from None


def export_onnx(
    lm: LoadedModel, path: str | Path, opset: int = OPSET, card: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Write ``lm`` as ONNX to ``path`` (atomically); returns what was written, and, where
    onnxruntime is installed, the largest difference between its outputs and PyTorch's on a
    random batch."""
    path = Path(path)
    if path.suffix.lower() != ".onnx":
        raise ExportError(f"{path}: an ONNX export needs the .onnx suffix")
    onnx = _require("onnx")
    _require("onnxscript")
    newest = onnx.defs.onnx_opset_version()
    if not MIN_OPSET <= opset <= newest:
        raise ExportError(
            f"--opset {opset}: this export needs opset {MIN_OPSET}..{newest} (this onnx's newest)"
        )
    wrapper = _WithPreprocessing(lm).eval()
    h, w, c = lm.prep.image_size
    example = torch.randint(0, 256, (2, h, w, c), dtype=torch.uint8)
    batch = torch.export.Dim("batch", min=1)
    quiet = contextlib.ExitStack()  # the exporter prints its progress and warnings
    quiet.enter_context(contextlib.redirect_stdout(io.StringIO()))
    quiet.enter_context(contextlib.redirect_stderr(io.StringIO()))
    try:
        with _exportable(lm.model), torch.no_grad(), quiet:
            program = torch.onnx.export(
                wrapper, (example,), None, dynamo=True, opset_version=opset,
                input_names=["images"], output_names=["logits", "probabilities"],
                dynamic_shapes=({0: batch},), verbose=False,
            )  # fmt: skip
    except Exception as err:  # the exporter's own errors are long internal traces
        first = str(err).strip().splitlines()[0] if str(err).strip() else ""
        raise ExportError(
            f"{lm.path}: the {lm.model.cfg.variant} model could not be exported to ONNX "
            f"(opset {opset}): {type(err).__name__}: {first[:300]}"
        ) from None
    model = program.model_proto
    props = {
        "format": "alexnet-onnx",
        "input": f"images: uint8 {'RGB' if c == 3 else 'grayscale'} (N, {h}, {w}, {c}), "
        f"images resized (shorter side {h}, bilinear) and centre-cropped to {h}x{w} as "
        "`alexnet prepare` stores them; not normalised (the graph subtracts the mean and "
        "scales)",
        "outputs": "logits (N, classes), probabilities (N, classes): centre view",
        "model_config": json.dumps(_model_config(lm)),
        "classes": json.dumps(lm.classes),
        "names": json.dumps(lm.names),
        "preprocessing": json.dumps(lm.prep.meta()),
        "source": str(lm.path),
    }
    if card is not None:  # the model card's facts (engine/card.py)
        props["model_card"] = json.dumps(card, default=str)
    del model.metadata_props[:]
    for key, value in props.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    with atomic_path(path) as tmp:
        onnx.save(model, str(tmp))
    written = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), opset)
    result: dict[str, Any] = {"path": str(path), "opset": written, "input": props["input"]}
    diff = verify(path, lm)
    if diff is not None and diff > 1e-3:
        path.unlink(missing_ok=True)
        raise ExportError(
            f"{path}: onnxruntime's outputs differ from PyTorch's by {diff:.2g} (more than "
            "1e-3); not keeping the export"
        )
    result["max_abs_diff"] = diff
    return result


def _model_config(lm: LoadedModel) -> dict[str, Any]:
    import dataclasses

    return dataclasses.asdict(lm.model.cfg)


def verify(path: str | Path, lm: LoadedModel, images: np.ndarray | None = None) -> float | None:
    """Largest |onnxruntime - PyTorch| over the logits and probabilities for ``images``
    (uint8 NHWC; default: 3 random images), PyTorch running the model as it always does;
    None where onnxruntime is not installed."""
    try:
        import onnxruntime as ort
    except ImportError:
        return None
    if images is None:
        h, w, c = lm.prep.image_size
        images = np.random.default_rng(0).integers(0, 256, (3, h, w, c), dtype=np.uint8)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {"images": images})
    with torch.no_grad():  # the model as it runs in PyTorch (its own LRN and conv paths)
        want = _WithPreprocessing(lm).eval()(torch.from_numpy(images))
    return max(float(np.abs(g - e.numpy()).max()) for g, e in zip(got, want, strict=True))
