"""The one inference loop, and top-1 / top-5 error as the paper reports it (§2, Results).

:func:`model_outputs` runs models over batches of inputs and yields softmax probabilities
(averaged over 10-crop views, §4.1, and over an ensemble's models, the paper's "5 CNNs")
or fc7 features; training's validation, ``alexnet evaluate``, ``predict``, ``features``,
``neighbors`` and the figures all go through it. Under torchrun every rank evaluates a
disjoint share of the images and the counts are summed, so every image is counted exactly
once and the reported count equals the dataset size.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from typing import Any

import torch
from torch import Tensor, nn

from .distributed import all_reduce_sum


def autocast_context(
    device: torch.device, dtype: torch.dtype | None
) -> contextlib.AbstractContextManager:
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def view_probabilities(models: list[nn.Module], x: Tensor) -> Tensor:
    """Softmax probabilities averaged over views (x: (V, N, C, H, W)) and models."""
    views = x if x.dim() == 5 else x.unsqueeze(0)
    v, n = views.shape[:2]
    flat = views.flatten(0, 1)
    if flat.dim() == 4 and flat.shape[1] in (1, 3):
        flat = flat.contiguous(memory_format=torch.channels_last)
    total = None
    for model in models:
        probs = model(flat).float().softmax(-1).view(v, n, -1).mean(0)
        total = probs if total is None else total + probs
    assert total is not None
    return total / len(models)


def has_top5(num_classes: int | None) -> bool:
    """Whether a top-5 error says anything: with 5 classes or fewer, five guesses cover
    them all and it is always 0. (Unknown: shown.)"""
    return num_classes is None or num_classes > 5


def topk_correct(probs: Tensor, labels: Tensor, k: int = 5) -> tuple[Tensor, Tensor]:
    """(top-1 correct, top-k correct) boolean vectors."""
    k = min(k, probs.shape[1])
    top = probs.topk(k, dim=1).indices
    hit = top == labels.view(-1, 1)
    return hit[:, 0], hit.any(dim=1)


@contextlib.contextmanager
def _eval_mode(models: list[nn.Module]) -> Iterator[None]:
    was_training = [m.training for m in models]
    for m in models:
        m.eval()
    try:
        yield
    finally:
        for m, t in zip(models, was_training, strict=True):
            m.train(t)


def model_outputs(
    models: nn.Module | list[nn.Module],
    batches: Iterable[dict[str, Tensor]],
    device: torch.device,
    autocast_dtype: torch.dtype | None = None,
    features: bool = False,
) -> Iterator[tuple[Tensor, dict[str, Tensor]]]:
    """(outputs, batch) for each batch ({"inputs": (N, C, S, S) or (V, N, C, S, S), ...}):
    softmax probabilities (N, classes) averaged over views and models, or with
    ``features`` the first model's fc7 vectors (N, D) averaged over views. Models run in
    eval mode without gradients and are put back as they were. Non-finite outputs (broken
    weights or inputs) raise ValueError rather than turn into a plausible error rate."""
    models = models if isinstance(models, list) else [models]
    with torch.no_grad(), _eval_mode(models):
        for batch in batches:
            x = batch["inputs"].to(device, non_blocking=True)
            with autocast_context(device, autocast_dtype):
                if features:
                    views = x if x.dim() == 5 else x.unsqueeze(0)
                    v, n = views.shape[:2]
                    out = models[0].forward_features(views.flatten(0, 1)).float()
                    out = out.view(v, n, -1).mean(0)
                elif "model_inputs" in batch:  # an ensemble, each model with its own inputs
                    inputs = batch["model_inputs"]
                    out = sum(
                        view_probabilities([m], xi.to(device, non_blocking=True))
                        for m, xi in zip(models, inputs, strict=True)
                    ) / len(models)
                else:
                    out = view_probabilities(models, x)
            if not bool(torch.isfinite(out).all()):
                raise ValueError(
                    "the model's outputs are not finite (NaN or inf): its weights or the "
                    "inputs are broken; check the weights file"
                )
            yield out, batch


def evaluate_model(
    models: nn.Module | list[nn.Module],
    loader: Any,
    device: torch.device,
    autocast_dtype: torch.dtype | None = None,
    progress: Any = None,
) -> dict[str, float]:
    """Loss, top-1 and top-5 error over ``loader`` (summed over ranks)."""
    sums = torch.zeros(4, dtype=torch.float64, device=device)  # nll, top1, top5, n
    for probs, batch in model_outputs(models, loader.batches(), device, autocast_dtype):
        y = batch["labels"]
        c1, c5 = topk_correct(probs, y)
        nll = -torch.log(probs.gather(1, y.view(-1, 1)).clamp_min(1e-12)).sum()
        sums += torch.stack(
            [
                nll.double(),
                c1.sum().double(),
                c5.sum().double(),
                torch.tensor(float(len(y)), device=device, dtype=torch.float64),
            ]
        )
        if progress is not None:
            progress(len(y))
    all_reduce_sum(sums)
    nll, c1, c5, n = sums.tolist()
    n = max(n, 1.0)
    return {
        "loss": nll / n,
        "top1_error": 1.0 - c1 / n,
        "top5_error": 1.0 - c5 / n,
        "images": int(sums[3].item()),
    }
