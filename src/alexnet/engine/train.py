"""``alexnet train``: the paper's recipe (§5) on CPU, one GPU, or many through torchrun.

Plain functions: :func:`train` sets a run up and loops over :func:`train_one_epoch` and
:func:`~alexnet.engine.metrics.evaluate_model`. Rank 0 alone logs and writes, and holds a
lock on the run directory while it does. Every epoch ends with an atomic checkpoint, which
also carries the rows of ``metrics.csv`` (rewritten from them, so the two never disagree);
SIGTERM/SIGUSR1 and Ctrl-C finish the current step (under torchrun: up to the next
``run.log_every`` step), checkpoint and exit with code 75 (130 for Ctrl-C; resume with
``--resume``); a non-finite loss stops the run and keeps the last good checkpoint. The
best validation epoch's weights are kept as ``best.safetensors``.
"""

from __future__ import annotations

import copy
import csv
import dataclasses
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .. import __version__
from ..atomic import atomic_path, write_json
from ..config import ConfigError, TrainConfig, from_dict, save_yaml, saved_model_config, to_dict
from ..data.dataset import LoaderSpec, Prepared, make_loader
from ..data.preprocess import Preprocessing
from ..network.fourier import conv_decisions
from ..network.model import AlexNet, build_model
from . import distributed as D
from .card import card_facts, epochs_text, write_card
from .checkpoint import atomic_save, export_weights, load_checkpoint, load_matching, load_weights
from .execution import (
    available_precisions,
    execution_record,
    resolve_decode,
    resolve_precision,
    resolve_threads,
    resolve_workers,
)
from .metrics import autocast_context, evaluate_model, has_top5, topk_correct
from .optim import LRSchedule, WeightAverage, build_optimizer, freeze_layers, set_lr
from .rundir import RunDirLock, StopFlag, check_run_dir

EXIT_PREEMPTED = 75  # EX_TEMPFAIL: stopped on request, resume to continue
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as a shell reports Ctrl-C; checkpoint saved all the same
METRICS_FIELDS = [
    "epoch", "train_loss", "train_top1_error", "train_top5_error", "val_loss", "val_top1_error",
    "val_top5_error", "lr", "images_per_s", "epoch_seconds", "wall_seconds",
]  # fmt: skip


class TrainingStopped(Exception):
    """Raised to end training early; ``code`` is the process exit status."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


class TrainingDiverged(TrainingStopped):
    """The loss became NaN or infinite; the last checkpoint is from before it did."""

    def __init__(self, message: str) -> None:
        super().__init__(message, 1)


# --------------------------------------------------------------------------------------
# Setup helpers


def configure_model_from_data(cfg: TrainConfig, data: Prepared, log: Any) -> TrainConfig:
    """The data decides classes, channels and crop size; say so when the config differed."""
    h, w, c = data.image_size
    if data.num_classes < 2:
        raise ConfigError(
            f"{data.root} has {data.num_classes} class ({', '.join(data.classes)}): a classifier "
            "needs two or more; prepare the folder that holds the class folders"
        )
    crop = cfg.data.crop or (224 if h >= 224 else h)
    if crop <= min(h, w) // 4:
        log(
            f"note: data.crop={crop} takes {crop} px crops of {h}x{w} images (the preset is "
            "for images of about that size); set data.crop, or prepare with --size"
        )
    changes = {}
    if cfg.model.num_classes != data.num_classes:
        changes["num_classes"] = data.num_classes
    if cfg.model.in_channels != c:
        changes["in_channels"] = c
    if (cfg.model.input_size or crop) != crop:
        changes["input_size"] = crop
    if changes:
        said = ", ".join(
            f"model.{k}={v} (the config said {getattr(cfg.model, k)})" for k, v in changes.items()
        )
        log(f"from the data ({data.root}): {said}")
    model_cfg = dataclasses.replace(cfg.model, **{"input_size": crop, **changes})
    if cfg.data.cutout > crop:
        raise ConfigError(
            f"data.cutout={cfg.data.cutout} is larger than the {crop} px crop"
            + ("" if cfg.data.crop else f" taken from the data ({data.root})")
            + "; lower data.cutout"
        )
    return dataclasses.replace(cfg, model=model_cfg, data=dataclasses.replace(cfg.data, crop=crop))


def apply_init_from(model: AlexNet, path: str, log: Any) -> dict[str, Any]:
    """Transfer learning: load matching layers; report every shape mismatch by name.
    Returns the file's metadata."""
    state, meta = load_weights(path)
    report = load_matching(model, state)
    # A bias or two fitting by chance is still training from scratch.
    if not any(key.endswith("weight") for key in report["loaded"]):
        raise ConfigError(
            f"--init-from {path}: none of its weights fits this model (variant "
            f"{model.cfg.variant!r}, towers={model.cfg.towers}); "
            "it holds weights of another network: check model.variant and model.towers"
        )
    log(f"init from {path}: loaded {len(report['loaded'])} tensors")
    for line in report["shape_mismatch"]:
        log(f"  not loaded (shape): {line} — re-initialised")
    for key in report["unexpected"]:
        log(f"  not loaded (no such layer in this model): {key}")
    missing = [
        k
        for k in report["missing"]
        if not any(k == m.split(":")[0] for m in report["shape_mismatch"])
    ]
    for key in missing:
        log(f"  not in the file, kept from init: {key}")
    return meta


# --------------------------------------------------------------------------------------
# Run state and checkpoints


@dataclasses.dataclass
class Progress:
    epoch: int = 0  # the epoch in progress (0-based)
    batch: int = 0  # batches of it already done
    global_step: int = 0
    # Running sums of the epoch in progress (restored on a mid-epoch resume).
    loss_sum: float = 0.0
    top1_sum: float = 0.0
    top5_sum: float = 0.0
    seen: int = 0
    wall_seconds: float = 0.0


def rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    # The checkpoint is loaded onto the training device; generator states live on the host.
    torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


def checkpoint_state(
    model: nn.Module, optimizer: torch.optim.Optimizer, schedule: LRSchedule, scaler: Any,
    progress: Progress, cfg: TrainConfig, prep: Preprocessing, best: dict[str, Any],
) -> dict[str, Any]:  # fmt: skip
    return {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "schedule": schedule.state_dict(),
        "scaler": scaler.state_dict() if scaler is not None else None,
        "progress": dataclasses.asdict(progress),
        "rng": rng_state(),
        "config": to_dict(cfg),
        "version": __version__,
        # The preprocessing, as in a weights export: inference loads either.
        "classes": list(prep.classes),
        "names": list(prep.names),
        "preprocessing": prep.meta(),
        **prep.tensors(),  # mean_image, eigenvalues, eigenvectors
        "best": best,
    }


# --------------------------------------------------------------------------------------
# The loop


def _log_line(msg: str) -> None:
    print(msg, flush=True)


@dataclasses.dataclass
class TrainContext:
    """What every epoch of a run shares; :func:`train` builds it once."""

    cfg: TrainConfig
    device: torch.device
    autocast: torch.dtype | None  # None: fp32
    scaler: torch.amp.GradScaler | None  # fp16 only
    stop: StopFlag
    dist: D.DistInfo
    ckpt_path: Path  # named when a non-finite loss stops the run
    show_progress: bool  # rank 0 and not --quiet
    conv_impl: dict[str, Any] | None = None  # what the first training step ran, once known


# The step loop sums these on the device; the host reads them only at sync points.
SUM_FIELDS = ("loss_sum", "top1_hits", "top5_hits", "images")


def new_sums(device: torch.device) -> torch.Tensor:
    # float64: an ImageNet epoch's loss sum (~1e7) keeps its digits; counts stay exact.
    return torch.zeros(len(SUM_FIELDS), dtype=torch.float64, device=device)


@torch.no_grad()
def accumulate(
    sums: torch.Tensor, loss: torch.Tensor, logits: torch.Tensor, y: torch.Tensor
) -> None:
    """Add one step's loss sum, top-1/top-5 hits and image count to ``sums`` in place: only
    device work, so the step loop never waits for the device."""
    hits1, hits5 = topk_correct(logits.float(), y)
    n = y.shape[0]
    sums[0] += loss.detach().double() * n
    sums[1] += hits1.sum()
    sums[2] += hits5.sum()
    sums[3] += n


def sync_sums(sums: torch.Tensor, stop: bool) -> tuple[list[float], bool]:
    """The loop's only host sync: the sums since the last call, over all ranks, and whether
    any rank was asked to stop. One all-reduce on this rank's device carries both (a flag
    per rank, summed: > 0 if any); ``sums`` restarts from zero."""
    flag = sums.new_full((1,), float(stop))
    *totals, stops = D.all_reduce_sum(torch.cat([sums, flag])).tolist()
    sums.zero_()
    return totals, stops > 0


def _nonfinite(value: float, progress: Progress, unread: int, ctx: TrainContext) -> str:
    where, detail = f"step {progress.batch}", f"global step {progress.global_step}"
    if unread:
        where += (
            " or the step before it" if unread == 1 else f" or one of the {unread} steps before it"
        )
        detail += f"; the loss is read every run.log_every={ctx.cfg.run.log_every} steps"
    return (
        f"loss became {value} at epoch {progress.epoch + 1}, {where} ({detail}); stopping "
        f"without saving this state. The last good checkpoint is {ctx.ckpt_path}. Lower "
        "optim.lr or check the data."
    )


def train_one_epoch(
    model: nn.Module, loader: Any, optimizer: torch.optim.Optimizer, schedule: LRSchedule,
    progress: Progress, ctx: TrainContext,
) -> dict[str, float]:  # fmt: skip
    """One pass over this rank's share of the epoch, from ``progress.batch`` on.

    Losses and hits are read on the host every ``run.log_every`` steps, at each tenth of the
    epoch and at its end (:func:`sync_sums`); that is where a non-finite loss and a stop request on another
    rank are noticed. A stop request in a world of one is honoured after the current step.
    """
    cfg = ctx.cfg
    clip, every = cfg.optim.clip_grad_norm, cfg.run.log_every
    scaler = ctx.scaler
    model.train()
    total = len(loader)
    # Each tenth of the epoch is a sync point too: a log gets a line at least every 10%,
    # however few steps an epoch has (every rank has the same total, so the same points).
    tenths = {math.ceil(total * k / 10) for k in range(1, 11)}
    bar = (
        _Bar(total, progress.batch, f"epoch {progress.epoch + 1}/{cfg.run.epochs}", tenths)
        if ctx.show_progress
        else None
    )
    t0, seen0 = time.perf_counter(), progress.seen
    sums = new_sums(ctx.device)
    synced = progress.batch  # the last step whose loss has been read
    try:
        for x, y in loader:
            lr = schedule.lr_at(progress.epoch, progress.batch)
            set_lr(optimizer, lr)
            with autocast_context(ctx.device, ctx.autocast):
                logits = model(x)
                loss = nn.functional.cross_entropy(
                    logits.float(), y, label_smoothing=cfg.optim.label_smoothing
                )
            optimizer.zero_grad(set_to_none=True)
            if scaler is not None:
                scaler.scale(loss).backward()
                if clip:
                    scaler.unscale_(optimizer)
                    nn.utils.clip_grad_norm_(model.parameters(), clip)
                scaler.step(optimizer)
                scaler.update()
            else:
                loss.backward()
                if clip:
                    nn.utils.clip_grad_norm_(model.parameters(), clip)
                optimizer.step()
            accumulate(sums, loss, logits, y)
            progress.batch += 1
            progress.global_step += 1
            if ctx.conv_impl is None:  # what the training step ran, once decided
                ctx.conv_impl = conv_decisions(model)
            if bar is not None:
                bar.advance()
            asked = ctx.stop.signal is not None
            # Every rank reaches the same sync points: the all-reduce needs all of them.
            if not (
                progress.batch % every == 0
                or progress.batch in tenths
                or progress.batch == total
                or (asked and not ctx.dist.distributed)
            ):
                continue
            (loss_sum, hits1, hits5, images), stopping = sync_sums(sums, asked)
            if not math.isfinite(loss_sum):  # a non-finite loss makes the sum so
                unread = progress.batch - synced - 1  # steps before this one, not yet read
                raise TrainingDiverged(_nonfinite(loss_sum, progress, unread, ctx))
            progress.loss_sum += loss_sum
            progress.top1_sum += hits1
            progress.top5_sum += hits5
            progress.seen += round(images)
            synced = progress.batch
            if bar is not None:
                rate = (progress.seen - seen0) / max(time.perf_counter() - t0, 1e-9)
                bar.report(
                    loss=progress.loss_sum / progress.seen,
                    top1_err=1 - progress.top1_sum / progress.seen,
                    rate=rate,
                )
            if stopping:
                by = ctx.stop.signal
                code = EXIT_INTERRUPTED if by == "SIGINT" else EXIT_PREEMPTED
                raise TrainingStopped(f"stopped by {by or 'a signal on another rank'}", code)
    finally:
        if bar is not None:
            bar.close()
    seconds = time.perf_counter() - t0
    seen = max(progress.seen, 1)
    return {
        "train_loss": progress.loss_sum / seen,
        "train_top1_error": 1 - progress.top1_sum / seen,
        "train_top5_error": 1 - progress.top5_sum / seen,
        "images_per_s": (progress.seen - seen0) / max(seconds, 1e-9),
        "epoch_seconds": seconds,
    }


class _Bar:
    """tqdm on a TTY; plain lines otherwise (logs, CI, SLURM): one at each tenth of the
    epoch, and one at the first readout ``every_s`` seconds after the last line (a long
    epoch still shows progress every minute or so)."""

    def __init__(
        self, total: int, initial: int, desc: str, tenths: set[int], every_s: float = 60.0
    ) -> None:
        self.total, self.n, self.desc, self.every_s = total, initial, desc, every_s
        self.initial = initial  # steps done before this process (a resumed epoch)
        self.tenths = tenths
        self.t0 = self.last_line = time.perf_counter()
        self.tqdm = None
        # The bar draws on stderr, the plain lines go to stdout with the epoch lines: a
        # bar only when both are a terminal (`train ... > log` keeps its lines in the log).
        if sys.stderr.isatty() and sys.stdout.isatty():
            from tqdm import tqdm

            self.tqdm = tqdm(
                total=total, initial=initial, desc=desc, unit="batch", dynamic_ncols=True
            )

    def advance(self) -> None:
        """One step done (every step: host bookkeeping only)."""
        self.n += 1
        if self.tqdm is not None:
            self.tqdm.update(1)

    def report(self, loss: float, top1_err: float, rate: float) -> None:
        """The running numbers, known at readouts (every ``run.log_every`` steps, each
        tenth, the epoch's end)."""
        if self.tqdm is not None:
            self.tqdm.set_postfix(
                loss=f"{loss:.3f}", top1_err=f"{100 * top1_err:.1f}%", img_s=f"{rate:.0f}"
            )
            return
        now = time.perf_counter()
        if self.n in self.tenths or self.n == self.total or now - self.last_line >= self.every_s:
            self.last_line = now
            done = max(self.n - self.initial, 1)  # the steps timed since t0
            eta = (self.total - self.n) * (now - self.t0) / done
            _log_line(
                f"{self.desc} step {self.n}/{self.total} loss {loss:.4f} top1-err {100 * top1_err:.2f}% "
                f"{rate:.0f} img/s ETA {eta:.0f}s"
            )

    def close(self) -> None:
        if self.tqdm is not None:
            self.tqdm.close()


def write_metrics(path: Path, rows: list[dict[str, Any]]) -> None:
    """metrics.csv, rewritten whole and atomically from the run's rows. The checkpoint
    carries the same rows, and a resume rewrites the file from them: a crash between the
    two writes neither loses a row nor repeats one."""
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=METRICS_FIELDS)
        w.writeheader()
        w.writerows({k: row.get(k, "") for k in METRICS_FIELDS} for row in rows)


def _saved_rows(state: dict[str, Any], path: Path, epochs: int) -> list[dict[str, Any]]:
    """The checkpoint's metrics rows; a checkpoint from before they were kept there: the
    file's first ``epochs`` rows."""
    if "metrics" in state:
        return list(state["metrics"])
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))[:epochs]


def _tensorboard(out: Path, next_epoch: int) -> Any:
    """TensorBoard's writer, where installed. On resume, the epochs logged after the
    checkpoint (by the run that stopped) are purged, so no epoch appears twice."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(
        str(out / "tensorboard"), purge_step=next_epoch if next_epoch > 1 else None
    )


def check_resume_data(state: dict[str, Any], data: Prepared, ckpt_path: Path) -> None:
    """--resume on other data (other classes, image size or channels) is an error naming
    both sides, raised before the run directory changes."""
    model_cfg = state.get("config", {}).get("model", {})
    saved = Preprocessing.from_meta(
        state, str(ckpt_path), int(model_cfg.get("num_classes") or data.num_classes),
        int(model_cfg.get("input_size") or 224),
    )  # fmt: skip
    saved.check_data(data.image_size, data.classes, f"--data {data.root}")


def _keep_dropout_form(cfg: TrainConfig, state: dict[str, Any], log: Any) -> TrainConfig:
    """A resumed run keeps the dropout it was trained with (runs from before
    ``model.dropout_form`` existed used inverted dropout)."""
    saved = saved_model_config(state.get("config", {}).get("model", {}))
    form = saved["dropout_form"] or (
        "paper" if saved.get("variant", "paper") == "paper" else "inverted"
    )
    if cfg.model.resolved().dropout_form != form:
        log(f"--resume: keeping the run's {form} dropout (model.dropout_form)")
        cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, dropout_form=form))
    return cfg


def resolve_config_for_resume(
    out: Path, cfg: TrainConfig | None, overrides: list[str]
) -> TrainConfig:
    """On --resume the run's saved config is the base; --set overrides still apply. ``cfg``
    (from --preset/--config) is used only where the run saved none: a preset read again
    would silently drop what the run was started with (its --set values)."""
    from ..config import apply_overrides, load_yaml

    saved = out / "config.yaml"
    if not saved.is_file():
        if cfg is not None:
            return cfg
        raise FileNotFoundError(f"--resume: {saved} not found; is {out} a run directory?")
    if cfg is not None:
        print(
            f"alexnet train: --resume continues with {saved}; the --preset/--config given is "
            "not read again (change settings with --set)",
            file=sys.stderr,
        )
    raw = load_yaml(saved)
    raw["model"] = saved_model_config(raw.get("model") or {})
    return from_dict(TrainConfig, apply_overrides(raw, overrides))


def train(
    cfg: TrainConfig,
    out: str | Path,
    resume: bool = False,
    quiet: bool = False,
    force: bool = False,
) -> dict[str, Any]:
    """Train according to ``cfg`` into run directory ``out``; returns the summary.
    ``resume`` continues the run there; ``force`` starts over in a directory that holds
    one (replacing its run files, nothing else)."""
    out = Path(out)
    dist = D.setup(cfg.run.device)
    log = (lambda msg: None) if (quiet or not dist.is_main) else _log_line
    stop = StopFlag(announce=dist.is_main)
    stop.install()
    lock = RunDirLock(out)
    try:
        return _train(cfg, out, resume, force, dist, log, stop, quiet, lock)
    finally:
        lock.release()
        stop.uninstall()
        D.cleanup()


def _train(
    cfg: TrainConfig,
    out: Path,
    resume: bool,
    force: bool,
    dist: D.DistInfo,
    log: Any,
    stop: StopFlag,
    quiet: bool,
    lock: RunDirLock,
) -> dict[str, Any]:
    if not cfg.data.path:
        raise ConfigError(
            "no training data: pass --data DIR (a directory made by `alexnet prepare`)"
        )
    data = Prepared(cfg.data.path)
    has_val = "val" in data.splits() and len(data.split("val")) > 0
    if cfg.schedule.kind == "plateau" and not has_val:
        raise ConfigError(
            f"schedule.kind=plateau divides the lr when the validation error stops improving, "
            f"but {data.root} has no val split: prepare the data with one (`alexnet prepare "
            "... --val-fraction 0.1`) or choose another schedule (--set schedule.kind=step)"
        )
    check_average(cfg)
    ckpt_path = out / "checkpoint.pt"
    # Array data (Fashion-MNIST, CIFAR-10 batches) has no JPEG decoding to place.
    decode, decode_reason = (
        resolve_decode(cfg.data.decode, dist.device) if data.kind == "jpeg" else ("none", "")
    )
    lock.acquire(dist)  # before anything in `out` is read or changed
    replaced = check_run_dir(out, resume, force)
    state = load_checkpoint(ckpt_path, map_location=dist.device) if resume else None
    if state is not None:  # the data must be what the run was trained on, before anything changes
        check_resume_data(state, data, ckpt_path)
        cfg = _keep_dropout_form(cfg, state, log)
    cfg = configure_model_from_data(cfg, data, log)
    if cfg.run.batch_size % dist.world_size:
        raise ConfigError(
            f"run.batch_size={cfg.run.batch_size} does not split evenly over {dist.world_size} ranks; "
            f"use a multiple of {dist.world_size}"
        )
    dev = dist.device
    torch.set_num_threads(resolve_threads(cfg.run.threads))
    precision = resolve_precision(cfg.run.precision, dev)
    eval_precision = resolve_precision(cfg.run.eval_precision, dev, key="run.eval_precision")
    autocast, needs_scaler = precision.autocast_dtype, precision.needs_scaler
    workers = resolve_workers(cfg.data.workers, accelerator=dev.type != "cpu")
    if decode == "cuda" and cfg.data.workers == "auto":
        workers = min(workers, 4)  # they only read the files: a few keep up
    best_path = out / "best.safetensors"  # the best validation epoch's weights
    if dev.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True

    torch.manual_seed(cfg.run.seed)
    model = build_model(cfg.model)
    if cfg.init_from and not resume:
        source = apply_init_from(model, cfg.init_from, log).get("source")
        if source == "torchvision" and cfg.data.normalize != "torchvision":
            # Those weights expect torchvision's per-channel statistics, not a mean image.
            log("init from torchvision's weights: data.normalize set to torchvision")
            cfg = dataclasses.replace(
                cfg, data=dataclasses.replace(cfg.data, normalize="torchvision")
            )
    model = model.to(dev)
    if cfg.run.channels_last:
        model = model.to(memory_format=torch.channels_last)
    per_rank = cfg.run.batch_size // dist.world_size
    # The one description of how images become inputs: used by the loaders below and saved
    # with every checkpoint and export, so evaluation and prediction rebuild the same inputs.
    prep = data.preprocessing(cfg.data.crop or 224, cfg.data.normalize, cfg.data.input_scale)
    spec = LoaderSpec(
        train=True, flip=cfg.data.flip, pca_std=cfg.data.pca_std, pad=cfg.data.pad,
        cutout=cfg.data.cutout,
    )  # fmt: skip
    train_loader = make_loader(
        data, "train", spec, per_rank, dev, prep, seed=cfg.run.seed, rank=dist.rank,
        world_size=dist.world_size, workers=workers, decode=decode if decode != "none" else "cpu",
    )  # fmt: skip
    if cfg.data.limit_train:
        train_loader.sampler.limit(cfg.data.limit_train)
    if len(train_loader) == 0:
        raise ConfigError(
            f"the training split has {train_loader.sampler.n} images, fewer than one batch of "
            f"{per_rank} per rank; lower run.batch_size"
        )
    val_loader = None
    if has_val:
        val_spec = dataclasses.replace(spec, train=False, views=cfg.data.val_views)
        val_loader = make_loader(
            data, "val", val_spec, per_rank, dev, prep, seed=cfg.run.seed, rank=dist.rank,
            world_size=dist.world_size, workers=workers,
            decode=decode if decode != "none" else "cpu",
        )  # fmt: skip
    schedule = LRSchedule(cfg.schedule, cfg.optim.lr, cfg.run.epochs, len(train_loader))
    scaler = torch.amp.GradScaler("cuda") if needs_scaler else None
    progress = Progress()
    best: dict[str, Any] = {"val_top1_error": None, "val_top5_error": None, "epoch": None}
    rows: list[dict[str, Any]] = []  # metrics.csv, one row per finished epoch
    last_val: dict[str, float] = {}  # the latest validation result

    precision_history: list[dict[str, Any]] = []  # [{from_step, precision}], one per change
    average = (
        WeightAverage(cfg.optim.average_epochs, cfg.run.epochs)
        if cfg.optim.average_epochs
        else None
    )
    if state is not None:
        model.load_state_dict(state["model"])
        if average is not None:
            average.load_state_dict(state.get("average"))

    train_model: nn.Module = model
    sync = lambda: None  # noqa: E731 - copies tower weights back into `model` when split
    if cfg.run.tower_devices:
        from ..network.towers import TwoDeviceAlexNet

        if dist.distributed:
            raise ConfigError(
                "run.tower_devices (model parallel) cannot be combined with torchrun DDP"
            )
        towers = TwoDeviceAlexNet(model, [torch.device(d) for d in cfg.run.tower_devices])
        train_model = towers

        def sync() -> None:
            model.load_state_dict(towers.grouped_state_dict())

    # Before DDP wraps the model: it fixes then which gradients each step waits for.
    freeze_layers(train_model, cfg.optim, cfg.freeze_conv)
    if dist.distributed:
        train_model = nn.parallel.DistributedDataParallel(
            model, device_ids=[dev.index] if dev.type == "cuda" else None
        )
    optimizer = build_optimizer(train_model, cfg.optim, cfg.freeze_conv)
    if cfg.run.compile:
        train_model = torch.compile(train_model)  # type: ignore[assignment]
    if state is not None:
        optimizer.load_state_dict(state["optimizer"])
        schedule.load_state_dict(state["schedule"])
        if scaler is not None and state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        progress = Progress(**state["progress"])
        best = state.get("best", best)
        rows = _saved_rows(state, out / "metrics.csv", progress.epoch)
        last_val = dict(state.get("last_val") or {})
        if dist.is_main:  # epochs after the checkpoint are trained again: drop their rows
            write_metrics(out / "metrics.csv", rows)
            if best["epoch"] == progress.epoch and progress.batch == 0 and not best_path.exists():
                # The stopped run saved the best epoch's checkpoint but not its weights
                # file (e.g. a full disk): these are those weights.
                export_weights(best_path, model.state_dict(), dataclasses.asdict(cfg.model), prep)
        set_rng_state(state["rng"])
        if progress.epoch >= cfg.run.epochs and progress.batch == 0:
            log(
                f"{out} has already trained its {epochs_text(cfg.run.epochs)}: nothing to train "
                f"(to train longer: --resume --set run.epochs=N); writing its summary again"
            )
        else:
            log(
                f"resumed {out} at epoch {progress.epoch + 1}, step {progress.batch} "
                f"(global step {progress.global_step})"
            )
        history = state.get("precision_history") or []
        before = history[-1]["precision"] if history else None
        if before and before != precision.name:
            keep = (
                f"; set run.precision={before} to keep it"
                if before in available_precisions(dev)
                else f"; {before} cannot run here"
            )
            log(
                f"note: this run trained in {before} until global step {progress.global_step} "
                f"and continues in {precision.name} ({precision.reason}){keep}"
            )
        precision_history = list(history)
    if not precision_history or precision_history[-1]["precision"] != precision.name:
        precision_history.append({"from_step": progress.global_step, "precision": precision.name})

    if dist.is_main:
        # --force: no file of the old run outlives it, and none goes before every check
        # above (--init-from, the loaders, the batch size) has passed.
        for name in replaced:
            (out / name).unlink(missing_ok=True)
        if replaced:
            log(f"--force: removed the previous run's {', '.join(replaced)} from {out}")
        save_yaml(cfg, out / "config.yaml")
    n_train = len(data.split("train"))
    limited = f" of {n_train:,}" if train_loader.sampler.n < n_train else ""
    left = progress.epoch < cfg.run.epochs  # False when resuming a finished run
    if left:
        log(
            f"training {cfg.model.variant} ({sum(p.numel() for p in model.parameters()):,} params) on "
            f"{train_loader.sampler.n:,}{limited} images, {dist.world_size} rank(s), device {dev}, "
            f"batch {cfg.run.batch_size} -> {out}"
        )
        spare = train_loader.sampler.n - len(train_loader) * cfg.run.batch_size
        if spare:  # whole batches only, as the paper's fixed-size batches
            log(
                f"{len(train_loader):,} steps an epoch of whole batches: each epoch leaves out "
                f"a different random {spare:,} images"
            )
    decoding = f", JPEG decoding on {decode} ({decode_reason})"
    if train_loader.loader is None:  # array data: batches are gathered in this process
        workers, decoding = 0, ""
    log(
        f"precision {precision.name} ({precision.reason}), evaluation {eval_precision.name}; "
        f"{torch.get_num_threads()} threads, {workers} loader worker(s){decoding}"
    )
    sched = cfg.schedule
    if left and sched.kind == "onecycle" and sched.warmup_epochs >= cfg.run.epochs:
        log(
            f"note: schedule.warmup_epochs={sched.warmup_epochs:g} is not shorter than "
            f"run.epochs={cfg.run.epochs}: the learning rate only climbs, never decays "
            f"(set schedule.warmup_epochs below run.epochs)"
        )

    def execution() -> dict[str, Any]:
        record = execution_record(
            dev, precision, eval_precision, workers, dist.world_size, ctx.conv_impl,
            conv_decisions(model), cfg.run.channels_last, cfg.run.compile,
            decode if train_loader.loader is not None else "none (array data)",
        )  # fmt: skip
        if len(precision_history) > 1:
            record["precision_history"] = precision_history
        if dist.group:
            record["process_group"] = torch.distributed.get_backend()
        return record

    ctx = TrainContext(
        cfg=cfg, device=dev, autocast=autocast, scaler=scaler, stop=stop, dist=dist,
        ckpt_path=ckpt_path, show_progress=dist.is_main and not quiet,
    )  # fmt: skip
    writer = _tensorboard(out, progress.epoch + 1) if dist.is_main else None
    t_start = time.perf_counter() - progress.wall_seconds

    def save() -> None:
        sync()
        progress.wall_seconds = time.perf_counter() - t_start
        if dist.is_main:
            ckpt = checkpoint_state(model, optimizer, schedule, scaler, progress, cfg, prep, best)
            ckpt = {
                **ckpt, "execution": execution(), "precision_history": precision_history,
                "metrics": rows, "last_val": last_val, "card": card(final=False),
                "average": average.state_dict() if average is not None else None,
            }  # fmt: skip
            atomic_save(ckpt, ckpt_path)
        D.barrier()

    n_params = sum(p.numel() for p in model.parameters())
    n_val = len(data.split("val")) if has_val else 0

    def card(final: bool, best_weights: bool = False) -> dict[str, Any]:
        """The model card's facts (engine/card.py) as of now, for the weights trained so far
        (after a whole epoch, or mid-epoch in a checkpoint) or, ``best_weights``, the best
        epoch's."""
        if best_weights:
            epoch: int | None = best["epoch"]
        else:
            epoch = progress.epoch if progress.batch == 0 else None
        row = next((r for r in rows if r.get("epoch") == epoch), {})
        results = {
            "weights_epoch": epoch,
            "weights_val_top1_error": row.get("val_top1_error"),
            "weights_val_top5_error": row.get("val_top5_error"),
            "best_val_top1_error": best["val_top1_error"],
            "best_val_top5_error": best["val_top5_error"],
            "best_epoch": best["epoch"],
            "epochs": progress.epoch,
            "wall_seconds": time.perf_counter() - t_start,
            "val_views": cfg.data.val_views,
            "val_split_images": n_val,
        }
        if final:
            results["final_val_top1_error"] = last_val.get("top1_error")
            results["final_val_top5_error"] = last_val.get("top5_error")
        data_facts = {"path": str(data.root), "train_images": train_loader.sampler.n,
                      "val_images": n_val}  # fmt: skip
        return card_facts(
            dataclasses.asdict(cfg.model.resolved()), prep, n_params, config=to_dict(cfg),
            results=results, execution=execution(), data=data_facts, source=str(out),
            reproduce=f"alexnet train --config {out / 'config.yaml'} --data {data.root} --out RUN_DIR",
        )  # fmt: skip

    new_best = False
    try:
        while progress.epoch < cfg.run.epochs and not schedule.stop:
            epoch = progress.epoch
            train_loader.sampler.set_epoch(epoch, start_batch=progress.batch)
            try:
                stats = train_one_epoch(
                    train_model, train_loader, optimizer, schedule, progress, ctx
                )
            except TrainingStopped as stopped:
                if stopped.code in (EXIT_PREEMPTED, EXIT_INTERRUPTED):
                    save()
                    log(
                        f"{stopped}: checkpoint saved at epoch {epoch + 1}, step {progress.batch}; continue with --resume"
                    )
                raise
            lr = optimizer.param_groups[0]["lr"] / optimizer.param_groups[0].get("lr_mult", 1.0)
            row: dict[str, Any] = {"epoch": epoch + 1, "lr": lr, **stats}
            if average is not None:  # before the checkpoint below, which holds the sums
                sync()
                average.add(model.state_dict(), epoch + 1)
            is_last = epoch + 1 == cfg.run.epochs
            if val_loader is not None and (
                (epoch + 1) % cfg.run.eval_every == 0 or is_last or cfg.schedule.kind == "plateau"
            ):
                sync()
                last_val = evaluate_model(model, val_loader, dev, eval_precision.autocast_dtype)
                row.update({f"val_{k}": v for k, v in last_val.items() if k != "images"})
                if (
                    best["val_top1_error"] is None
                    or last_val["top1_error"] < best["val_top1_error"]
                ):
                    best = {
                        "val_top1_error": last_val["top1_error"],
                        "val_top5_error": last_val["top5_error"],
                        "epoch": epoch + 1,
                    }
                    new_best = True
            schedule.end_epoch(epoch, row.get("val_top1_error"))  # None: no pass this epoch
            progress.epoch, progress.batch = epoch + 1, 0
            progress.loss_sum = progress.top1_sum = progress.top5_sum = 0.0
            progress.seen = 0
            row["wall_seconds"] = time.perf_counter() - t_start
            rows.append({k: row[k] for k in METRICS_FIELDS if k in row})
            val_txt = ""
            if "val_top1_error" in row and has_top5(cfg.model.num_classes):
                val_txt = (
                    f", val top-1/top-5 error {100 * row['val_top1_error']:.2f}% / "
                    f"{100 * row['val_top5_error']:.2f}%"
                )
            elif "val_top1_error" in row:
                val_txt = f", val top-1 error {100 * row['val_top1_error']:.2f}%"
            log(
                f"epoch {epoch + 1}/{cfg.run.epochs}: train loss {row['train_loss']:.4f}, train top-1 error "
                f"{100 * row['train_top1_error']:.2f}%{val_txt}, lr {lr:.2g}, {row['images_per_s']:.0f} img/s"
            )
            if epoch in schedule.drops[-1:]:
                log(
                    f"  validation error stopped improving: lr divided by {1 / cfg.schedule.factor:g}"
                )
            if (
                (progress.epoch % cfg.run.checkpoint_every == 0)
                or progress.epoch == cfg.run.epochs
                or schedule.stop
            ):
                save()
            if new_best:
                # Later epochs may overfit: keep this epoch's weights (model.safetensors
                # holds the last epoch's). Written after the checkpoint, so a failure here
                # (a full disk) never costs the epoch.
                new_best = False
                sync()
                if dist.is_main:
                    export_weights(
                        best_path, model.state_dict(), dataclasses.asdict(cfg.model), prep,
                        card(final=False, best_weights=True),
                    )  # fmt: skip
            if dist.is_main:  # after the checkpoint, which holds the same rows
                write_metrics(out / "metrics.csv", rows)
                if writer is not None:
                    for k, v in row.items():
                        if k != "epoch" and isinstance(v, float) and math.isfinite(v):
                            writer.add_scalar(k, v, epoch + 1)
        if schedule.stop:
            log(
                f"validation error stopped improving after {cfg.schedule.max_reductions} lr reductions: done"
            )
    finally:
        if writer is not None:
            writer.close()

    averaged = None
    if average is not None and progress.epoch == cfg.run.epochs:
        if average.epochs:
            averaged = finish_average(
                average, model, val_loader, dev, eval_precision.autocast_dtype, log
            )
        else:  # e.g. a finished run resumed with optim.average_epochs newly set
            log(
                f"note: nothing averaged: the checkpoint this run resumed from holds no sums "
                f"for {_span(average.first, cfg.run.epochs)} and none of it was trained "
                f"after it (an average.safetensors already in {out} is from before; its model "
                "card says which epochs it averages)"
            )
    wall = time.perf_counter() - t_start
    summary = {
        "run_dir": str(out),
        "best_val_top1_error": best["val_top1_error"],
        "best_val_top5_error": best["val_top5_error"],
        "best_epoch": best["epoch"],
        "best_weights": str(best_path) if best_path.exists() else None,
        "final_val_top1_error": last_val.get("top1_error"),
        "final_val_top5_error": last_val.get("top5_error"),
        "val_images": last_val.get("images"),
        "num_classes": cfg.model.num_classes,
        "epochs": progress.epoch,
        "global_steps": progress.global_step,
        "wall_seconds": wall,
        "checkpoint": str(ckpt_path),
        "weights": str(out / "model.safetensors"),
        "metrics": str(out / "metrics.csv"),
        "config": str(out / "config.yaml"),
        "version": __version__,
        "torch": torch.__version__,
        "device": str(dev),
        "world_size": dist.world_size,
        "execution": execution(),
    }
    if averaged is not None:
        summary["average"] = {
            "weights": str(out / "average.safetensors"),
            "epochs": averaged["epochs"],
            "val_top1_error": averaged["val"].get("top1_error"),
            "val_top5_error": averaged["val"].get("top5_error"),
        }
    if dist.is_main:
        final_card = card(final=True)
        export_weights(
            out / "model.safetensors", model.state_dict(), dataclasses.asdict(cfg.model), prep,
            final_card,
        )  # fmt: skip
        if averaged is not None:
            export_weights(
                out / "average.safetensors", averaged["state"], dataclasses.asdict(cfg.model),
                prep, average_card(final_card, averaged),
            )  # fmt: skip
        write_json(out / "summary.json", summary)
        write_card(
            final_card,
            out / "MODEL_CARD.md",
            "model.safetensors (last epoch), best.safetensors (best epoch)"
            + (f", average.safetensors (mean of {averaged['what']})" if averaged else ""),
        )
    return summary


def check_average(cfg: TrainConfig) -> None:
    """``optim.average_epochs`` needs a run of known length and weights whose mean is a
    model: refused with a plateau schedule (its length is not known in advance), batch
    norm (its running statistics would not match the mean weights) and beyond run.epochs."""
    n = cfg.optim.average_epochs
    if not n:
        return
    if n > cfg.run.epochs:
        raise ConfigError(
            f"optim.average_epochs={n} is more than run.epochs={cfg.run.epochs}; "
            f"average at most the {cfg.run.epochs} epochs the run trains"
        )
    if cfg.schedule.kind == "plateau":
        raise ConfigError(
            "optim.average_epochs averages the last epochs of a run of known length: use it with "
            "schedule.kind=onecycle, step or constant, not plateau"
        )
    if cfg.model.norm == "batchnorm":
        raise ConfigError(
            "optim.average_epochs cannot be used with model.norm=batchnorm: batch norm's "
            "running statistics would not match the averaged weights"
        )


def finish_average(
    average: WeightAverage, model: AlexNet, val_loader: Any, dev: torch.device,
    autocast: torch.dtype | None, log: Any,
) -> dict[str, Any]:  # fmt: skip
    """The averaged weights, and their validation result where there is a val split."""
    state = average.average(model.state_dict())
    first, last = average.epochs[0], average.epochs[-1]
    what = _span(first, last)  # "epochs 46-50" or "epoch 50"
    span = what.split()[-1]
    asked = last - average.first + 1
    if len(average.epochs) < asked:  # resumed inside the window without the earlier sums
        log(
            f"note: only {what} averaged, not the last {asked}: the checkpoint this "
            f"run resumed from (after epoch {first - 1}) held no sums for "
            f"{_span(average.first, first - 1)} (optim.average_epochs or run.epochs changed, or a "
            "checkpoint from a version without averaging)"
        )
    val: dict[str, float] = {}
    if val_loader is not None:
        mean_model = copy.deepcopy(model)
        mean_model.load_state_dict(state)
        val = evaluate_model(mean_model, val_loader, dev, autocast)
        del mean_model
        errors = (  # as the epoch lines say it
            f"top-1/top-5 error {100 * val['top1_error']:.2f}% / {100 * val['top5_error']:.2f}%"
            if has_top5(model.cfg.num_classes)
            else f"top-1 error {100 * val['top1_error']:.2f}%"
        )
        log(f"mean weights of {what}: val {errors}")
    return {"state": state, "epochs": [first, last], "span": span, "what": what, "val": val}


def average_card(card: dict[str, Any], averaged: dict[str, Any]) -> dict[str, Any]:
    """The run's model card, describing the averaged weights instead of the last epoch's."""
    results = dict(card.get("results") or {})
    results["weights_epoch"] = f"{averaged['span']}, averaged"
    results["weights_val_top1_error"] = averaged["val"].get("top1_error")
    results["weights_val_top5_error"] = averaged["val"].get("top5_error")
    results["notes"] = [
        *(results.get("notes") or []),
        f"These weights are the mean of the weights at the end of {averaged['what']} "
        f"(optim.average_epochs); model.safetensors holds the last epoch's.",
    ]
    return {**card, "results": results}


def _span(first: int, last: int) -> str:
    return f"epochs {first}-{last}" if last > first else f"epoch {first}"


def _average_text(a: dict[str, Any]) -> str:
    text = _span(*a["epochs"])
    if a.get("val_top1_error") is not None:
        text += f", val top-1 error {100 * a['val_top1_error']:.2f}%"
    return text


def format_summary(s: dict[str, Any]) -> str:
    def pct(v: float | None) -> str:
        return "n/a" if v is None else f"{100 * v:.2f}%"

    return "\n".join(
        [
            f"done: {epochs_text(s['epochs'])} in {s['wall_seconds']:.0f} s",
            (
                f"best validation top-1 / top-5 error: {pct(s['best_val_top1_error'])} / {pct(s['best_val_top5_error'])} (epoch {s['best_epoch']})"
                if has_top5(s.get("num_classes"))
                else f"best validation top-1 error: {pct(s['best_val_top1_error'])} (epoch {s['best_epoch']})"
            )
            if s["best_epoch"] is not None
            else "no validation error measured (no val split, or no epoch evaluated)",
            f"run directory: {s['run_dir']}",
            f"  checkpoint   {s['checkpoint']}",
            f"  weights      {s['weights']}",
            *([f"  best weights {s['best_weights']}"] if s.get("best_weights") else []),
            *(
                [f"  mean weights {s['average']['weights']} ({_average_text(s['average'])})"]
                if s.get("average")
                else []
            ),
            f"  metrics      {s['metrics']}",
            f"  summary      {os.path.join(s['run_dir'], 'summary.json')}",
        ]
    )
