"""The paper's optimizer and learning-rate schedules (§5).

The paper's update rule keeps the learning rate inside the velocity:

    v <- 0.9 v - 0.0005 lr w - lr g;     w <- w + v

``torch.optim.SGD`` keeps it outside (v <- m v + g + wd w; w <- w - lr v). The two give
identical weights while lr is constant; after an lr drop the paper's velocity still carries
the old step size for a few iterations, PyTorch's is rescaled at once. ``PaperSGD`` is the
printed rule; ``optim.form: pytorch`` selects torch.optim.SGD.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from ..config import OptimConfig, ScheduleConfig


class PaperSGD(torch.optim.Optimizer):
    """§5: v <- momentum * v - weight_decay * lr * w - lr * grad; w <- w + v."""

    def __init__(
        self, params: Any, lr: float, momentum: float = 0.9, weight_decay: float = 0.0005
    ) -> None:
        super().__init__(params, {"lr": lr, "momentum": momentum, "weight_decay": weight_decay})

    @torch.no_grad()
    def step(self, closure: Any = None) -> None:  # type: ignore[override]
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            grads = [p.grad for p in params]
            bufs = []
            for p in params:
                state = self.state[p]
                if "velocity" not in state:
                    state["velocity"] = torch.zeros_like(p)
                bufs.append(state["velocity"])
            lr, m, wd = group["lr"], group["momentum"], group["weight_decay"]
            torch._foreach_mul_(bufs, m)
            if wd:
                torch._foreach_add_(bufs, params, alpha=-wd * lr)
            torch._foreach_add_(bufs, grads, alpha=-lr)
            torch._foreach_add_(params, bufs)


def _is_conv(name: str) -> bool:
    layer = name.removeprefix("module.").split(".")[-2]  # DDP / tower prefixes
    return layer.startswith(("conv", "bn"))


def freeze_layers(model: nn.Module, cfg: OptimConfig, freeze_conv: bool = False) -> int:
    """Transfer learning: the conv layers stop learning (``freeze_conv`` or
    ``optim.conv_lr_mult: 0``). Returns how many tensors were frozen. Call it before the
    model is wrapped in DDP, which fixes at wrapping time which gradients it waits for."""
    if not (freeze_conv or cfg.conv_lr_mult == 0):
        return 0
    frozen = 0
    for name, p in model.named_parameters():
        if _is_conv(name) and p.requires_grad:
            p.requires_grad_(False)
            frozen += 1
    return frozen


def param_groups(model: nn.Module, cfg: OptimConfig) -> list[dict[str, Any]]:
    """The trainable parameters, conv vs fully connected (for transfer learning's lr
    multiplier), decayed vs not (biases and batch-norm parameters are not decayed unless
    optim.decay_biases)."""
    groups: dict[tuple[bool, bool], list[nn.Parameter]] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        conv = _is_conv(name)
        decay = p.ndim > 1 or cfg.decay_biases
        groups.setdefault((conv, decay), []).append(p)
    out = []
    for (conv, decay), params in sorted(groups.items()):
        out.append(
            {
                "params": params,
                "weight_decay": cfg.weight_decay if decay else 0.0,
                "lr_mult": cfg.conv_lr_mult if conv else 1.0,
                "name": f"{'conv' if conv else 'fc'}{'' if decay else '-nodecay'}",
            }
        )
    return out


def build_optimizer(
    model: nn.Module, cfg: OptimConfig, freeze_conv: bool = False
) -> torch.optim.Optimizer:
    if freeze_layers(model, cfg, freeze_conv) and isinstance(
        model, nn.parallel.DistributedDataParallel
    ):
        raise ValueError("freeze the layers (freeze_layers) before wrapping the model in DDP")
    groups = param_groups(model, cfg)
    if not groups:
        raise ValueError("no trainable parameters (every layer is frozen)")
    if cfg.form == "paper":
        if cfg.nesterov:
            raise ValueError(
                "optim.nesterov needs optim.form=pytorch (the paper's rule has no Nesterov form)"
            )
        return PaperSGD(groups, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    return torch.optim.SGD(
        groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov, foreach=True
    )


class LRSchedule:
    """Learning rate per step; plateau/step decisions at epoch ends. Checkpointable."""

    def __init__(
        self, cfg: ScheduleConfig, base_lr: float, epochs: int, steps_per_epoch: int
    ) -> None:
        self.cfg, self.base_lr, self.epochs, self.spe = (
            cfg,
            base_lr,
            epochs,
            max(1, steps_per_epoch),
        )
        self.reductions = 0
        self.best = math.inf
        self.bad_epochs = 0
        self.stop = False
        self.drops: list[int] = []  # epochs after which the lr was divided
        self.rate_since = 0  # the epoch at which the current rate began

    def lr_at(self, epoch: int, step: int) -> float:
        c = self.cfg
        if c.kind == "plateau":
            return self.base_lr * c.factor**self.reductions
        if c.kind == "step":
            return self.base_lr * c.factor ** (epoch // c.step_epochs)
        if c.kind == "onecycle":
            total = self.epochs * self.spe
            warm = c.warmup_epochs * self.spe
            t = epoch * self.spe + step
            if t < warm:
                return self.base_lr * (t + 1) / warm
            return self.base_lr * max(0.0, 1.0 - (t - warm) / max(1.0, total - warm))
        return self.base_lr

    def end_epoch(self, epoch: int, val_error: float | None) -> None:
        """§5: divide the lr by 10 when the validation error stopped improving; after
        ``max_reductions`` reductions the next plateau ends training. ``val_error`` is None
        on epochs without a validation pass: they count towards ``min_epochs`` only."""
        c = self.cfg
        if c.kind == "step" and (epoch + 1) % c.step_epochs == 0:
            self.drops.append(epoch)
        if c.kind != "plateau" or val_error is None:
            return
        if val_error < self.best - c.threshold:
            self.best, self.bad_epochs = val_error, 0
            return
        self.bad_epochs += 1
        if self.bad_epochs > c.patience - 1 and epoch + 1 - self.rate_since >= c.min_epochs:
            self.bad_epochs = 0
            if self.reductions < c.max_reductions:
                self.reductions += 1
                self.drops.append(epoch)
                self.rate_since = epoch + 1
            else:
                self.stop = True

    def state_dict(self) -> dict[str, Any]:
        return {
            "reductions": self.reductions,
            "best": self.best,
            "bad_epochs": self.bad_epochs,
            "stop": self.stop,
            "drops": list(self.drops),
            "rate_since": self.rate_since,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.reductions = int(state["reductions"])
        self.best = float(state["best"])
        self.bad_epochs = int(state["bad_epochs"])
        self.stop = bool(state["stop"])
        self.drops = list(state["drops"])
        self.rate_since = int(state.get("rate_since", self.drops[-1] + 1 if self.drops else 0))


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_mult", 1.0)


class WeightAverage:
    """The mean of the weights at the end of each of the last ``n`` of ``epochs`` epochs
    (``optim.average_epochs``): Polyak averaging over epochs, as SWA (Izmailov et al., 2018)
    does, but on the run's own schedule. Not in the paper. Sums are kept in fp32 on the
    weights' devices and travel in the checkpoint, so a resumed run averages the same
    epochs; a longer resumed run (``run.epochs`` raised) moves the window and starts over."""

    def __init__(self, n: int, epochs: int) -> None:
        self.first = max(1, epochs - n + 1)  # the first epoch (1-based) averaged
        self.sums: dict[str, torch.Tensor] = {}
        self.epochs: list[int] = []  # the epochs in the sums

    def add(self, state: dict[str, torch.Tensor], epoch: int) -> None:
        """Add the weights at the end of ``epoch`` (1-based) if it is in the window."""
        if epoch < self.first:
            return
        if any(e < self.first or e >= epoch for e in self.epochs):  # a moved window
            self.sums, self.epochs = {}, []
        for name, value in state.items():
            if not value.is_floating_point():  # counters: the last one is kept
                self.sums[name] = value.detach().clone()
            elif name in self.sums:
                self.sums[name].add_(value.detach().float())
            else:
                self.sums[name] = value.detach().float().clone()
        self.epochs.append(epoch)

    def average(self, like: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The mean weights, in the dtypes of ``like`` (the model's state dict)."""
        n = len(self.epochs)
        return {
            k: (v / n).to(like[k].dtype) if v.is_floating_point() else v.clone()
            for k, v in self.sums.items()
        }

    def state_dict(self) -> dict[str, Any]:
        return {"first": self.first, "epochs": list(self.epochs), "sums": self.sums}

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        """A checkpoint's sums; those of another window (run.epochs or the count changed)
        are dropped, and averaging starts again at this window's first epoch."""
        if not state or state.get("first") != self.first:
            return
        self.epochs = list(state["epochs"])
        self.sums = dict(state["sums"])
