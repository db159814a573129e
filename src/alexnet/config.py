"""Typed configuration: dataclasses validated on load, YAML presets, ``--set`` overrides.

Every field is checked against its annotation (``Literal`` choices, numbers, lists), and
an unknown key is an error naming the key and the keys that are allowed.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

import yaml

from .atomic import write_text


class ConfigError(ValueError):
    """A config key or value that is not allowed; the message says which and why."""


# --------------------------------------------------------------------------------------
# Model


@dataclasses.dataclass
class ModelConfig:
    """The network: the paper's (§3) plus the switches for its ablations."""

    variant: Literal["paper", "owt", "small"] = "paper"
    num_classes: int = 1000
    in_channels: int = 3
    # Square input side in pixels. None: 224 for paper/owt, 32 for small.
    input_size: int | None = None
    activation: Literal["relu", "tanh"] = "relu"
    # None: lrn for paper and small, none for owt (torchvision's network has no LRN).
    norm: Literal["lrn", "batchnorm", "none"] | None = None
    # LRN alpha: "mean" = alpha/n as in the authors' code, Caffe, PyTorch; "sum" = as printed.
    lrn_alpha: Literal["mean", "sum"] = "mean"
    lrn_k: float = 2.0  # §3.3's k (Caffe's bvlc_alexnet: 1)
    # Each tower normalises its own maps (False, the paper's two GPUs) or the window spans
    # all maps (True: Caffe's single-GPU bvlc_alexnet).
    lrn_across_towers: bool = False
    pooling: Literal["overlapping", "non-overlapping"] = "overlapping"
    dropout: float = 0.5
    # §4.2 as printed ("paper"): training zeroes outputs with probability `dropout` and
    # passes the rest unchanged, test time multiplies every output by 1 - dropout.
    # "inverted": PyTorch's nn.Dropout, training scales the kept outputs by 1 / (1 - p).
    # Same function at test time, but inverted doubles the fc inputs in training, which
    # quadruples the first steps' change in the logits and killed fc7 under the paper's
    # init (README, "Deviations"). None: paper for paper, inverted for owt and small.
    dropout_form: Literal["paper", "inverted"] | None = None
    # None: 2 for paper and small (grouped conv2/4/5), 1 for owt.
    towers: Literal[1, 2] | None = None
    # Remove any of conv3..conv5 (the paper's depth ablation, §7).
    drop_conv: list[str] = dataclasses.field(default_factory=list)
    # The sixth conv layer over pool5 of the paper's "1 CNN*" model (§6).
    extra_conv6: bool = False
    # Multiplier on every conv layer's channel count (0.5 = "half the kernels").
    width: float = 1.0
    # Width of fc6/fc7. None: 4096 for paper/owt, 1024 for small.
    fc_width: int | None = None
    # paper: N(0, 0.01) weights, biases init_bias in conv2/4/5, fc6/7 (§5);
    # kaiming: He-normal convs; torch: PyTorch's defaults (what torchvision uses).
    # None: paper for paper and small, torch for owt.
    init: Literal["paper", "kaiming", "torch"] | None = None
    init_bias: float = 1.0
    # How convolutions run, not what they compute: "direct" = PyTorch's kernels; "auto" /
    # "fourier" = conv2..conv5 in the Fourier domain on CPU in float32 (alexnet.network.fourier),
    # faster there; GPUs, bf16 and conv1 always run the direct kernels.
    conv_impl: Literal["auto", "direct", "fourier"] = "auto"

    def __post_init__(self) -> None:
        if self.num_classes < 1:
            raise ConfigError(f"model.num_classes must be >= 1, got {self.num_classes}")
        if self.in_channels < 1:
            raise ConfigError(f"model.in_channels must be >= 1, got {self.in_channels}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"model.dropout must be in [0, 1), got {self.dropout}")
        if self.width <= 0:
            raise ConfigError(f"model.width must be > 0, got {self.width}")
        if self.fc_width is not None and self.fc_width < 1:
            raise ConfigError(f"model.fc_width must be >= 1, got {self.fc_width}")
        bad = [c for c in self.drop_conv if c not in ("conv3", "conv4", "conv5")]
        if bad:
            raise ConfigError(
                f"model.drop_conv may name conv3, conv4 or conv5 only, got {bad} "
                "(conv1 and conv2 carry the LRN and pooling stages)"
            )
        if self.input_size is not None and self.input_size < 1:
            raise ConfigError(f"model.input_size must be >= 1, got {self.input_size}")

    def resolved(self) -> ModelConfig:
        """A copy with every variant-dependent default (None) filled in."""
        v = self.variant
        return dataclasses.replace(
            self,
            input_size=self.input_size or (32 if v == "small" else 224),
            norm=self.norm or ("none" if v == "owt" else "lrn"),
            towers=self.towers or (1 if v == "owt" else 2),
            fc_width=self.fc_width or (1024 if v == "small" else 4096),
            init=self.init or ("torch" if v == "owt" else "paper"),
            dropout_form=self.dropout_form or ("paper" if v == "paper" else "inverted"),
            drop_conv=list(self.drop_conv),
        )


def saved_model_config(d: dict[str, Any]) -> dict[str, Any]:
    """A model config read back from a run or weights file. Files from before
    ``dropout_form`` existed were all trained with inverted dropout; they keep it."""
    d = dict(d)
    d.setdefault("dropout_form", "inverted")
    return d


# --------------------------------------------------------------------------------------
# Generic loading


def _type_name(tp: Any) -> str:
    origin = get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " | ".join(_type_name(a) for a in get_args(tp))
    if tp is type(None):
        return "null"
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against annotation ``tp``; returns the (lightly converted) value."""
    origin = get_origin(tp)
    if origin is Literal:
        allowed = get_args(tp)
        if value in allowed and type(value) in {type(a) for a in allowed}:
            return value
        raise ConfigError(f"{key}: {value!r} is not allowed; choose one of {list(allowed)}")
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in get_args(tp):
            return None
        errors = []
        for option in get_args(tp):
            if option is type(None):
                continue
            try:
                return _coerce(value, option, key)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(f"{key}: {value!r} is not a valid {_type_name(tp)}")
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        (item,) = get_args(tp) or (Any,)
        return [_coerce(v, item, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return dict(value)
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, prefix=f"{key}.")
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected an integer, got {value!r}")
    if tp is float:
        number = value
        if isinstance(value, str):  # YAML 1.1 reads 1e-3 (no dot) as a string
            try:
                number = float(value)
            except ValueError:
                number = None
        if isinstance(number, (int, float)) and not isinstance(number, bool):
            if not math.isfinite(number):
                raise ConfigError(f"{key}: expected a finite number, got {value!r}")
            return float(number)
        raise ConfigError(f"{key}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{key}: expected a string, got {value!r}")
    return value


T = typing.TypeVar("T")


def from_dict(cls: type[T], data: Any, prefix: str = "") -> T:
    """Build dataclass ``cls`` from a mapping, rejecting unknown keys and bad values."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'}: expected a mapping, got {data!r}")
    assert dataclasses.is_dataclass(cls)
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields), key=str)  # YAML keys may be numbers too
    if unknown:
        raise ConfigError(
            f"unknown key {prefix}{unknown[0]!s}; allowed keys under "
            f"{prefix.rstrip('.') or 'the top level'}: {sorted(fields)}"
        )
    kwargs = {name: _coerce(value, hints[name], f"{prefix}{name}") for name, value in data.items()}
    try:
        return cls(**kwargs)
    except ConfigError as err:
        raise ConfigError(str(err)) from None


def to_dict(obj: Any) -> dict[str, Any]:
    return dataclasses.asdict(obj)


def parse_override(text: str) -> tuple[list[str], Any]:
    """``a.b=value`` -> (["a", "b"], value), the value parsed as YAML (1e-3, true, [1,2])."""
    if "=" not in text:
        raise ConfigError(f"--set expects key=value, got {text!r}")
    key, raw = text.split("=", 1)
    if not key.strip():
        raise ConfigError(f"--set expects key=value, got {text!r}")
    return key.strip().split("."), yaml.safe_load(raw) if raw.strip() else ""


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    for text in overrides:
        path, value = parse_override(text)
        node = data
        for part in path[:-1]:
            nxt = node.setdefault(part, {})
            if not isinstance(nxt, dict):
                raise ConfigError(f"--set {text}: {part} is not a section")
            node = nxt
        node[path[-1]] = value
    return data


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, refusing a key given twice in one mapping (the last would win
    without a word, and the first is usually the one the user meant to edit)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *base`: overriding is its point
                continue
            key = self.construct_object(key_node, deep=deep)
            try:
                again = key in seen
                seen.add(key)
            except TypeError:  # unhashable: the base class says so
                break
            if again:
                raise yaml.constructor.ConstructorError(
                    None, None, f"{key!r} is given twice", key_node.start_mark
                )
        return super().construct_mapping(node, deep)


def load_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.load(path.read_text(), Loader=_UniqueKeyLoader)  # a SafeLoader
    except yaml.YAMLError as err:
        mark, problem = getattr(err, "problem_mark", None), getattr(err, "problem", None)
        if mark is not None and problem:  # one line: where, and what
            raise ConfigError(f"{path}, line {mark.line + 1}: not valid YAML: {problem}") from None
        raise ConfigError(f"{path}: not valid YAML: {err}") from None
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path}: not UTF-8 text (byte {err.start}); save it as UTF-8") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections")
    return data


# --------------------------------------------------------------------------------------
# Training


@dataclasses.dataclass
class DataConfig:
    """Input pipeline (§2, §4.1). ``path`` is a prepared directory (``alexnet prepare``)."""

    path: str = ""
    # Side of the training/test crops. None: 224 for 256 px data, else the native size.
    crop: int | None = None
    flip: bool = True
    pca_std: float = 0.1  # §4.1 alpha_i ~ N(0, 0.1); 0 turns PCA colour noise off
    pad: int = 0  # small images: zero padding before the random crop
    # Cutout (DeVries & Taylor 2017; not in the paper): side in pixels of a square set to
    # the mean in every training crop, centred anywhere in it and clipped at its borders.
    # 0 = off.
    cutout: int = 0
    normalize: Literal["mean_image", "torchvision"] = "mean_image"
    # Multiplies (pixels - mean image), 0..255 units. The paper feeds raw differences (1.0).
    input_scale: float = 1.0
    # Decoding processes per rank (JPEG data). auto: one per spare core of this rank (at
    # most 8 on CPU, where they share the cores with training, 32 with a GPU, 4 when the GPU
    # decodes; none on a single core); the number used is recorded with the run.
    workers: int | Literal["auto"] = "auto"
    # Where JPEG data is decoded: cpu (loader workers, libjpeg-turbo), cuda (nvJPEG on the
    # training GPU, whole batches; the workers only read the files), or auto (cpu: it
    # trained faster end to end on an H100); recorded with the run.
    decode: Literal["auto", "cpu", "cuda"] = "auto"
    val_views: Literal["center", "ten-crop"] = "center"
    # Use at most this many training images (0 = all), a fixed random subset of the split:
    # smoke runs and quick experiments.
    limit_train: int = 0

    def __post_init__(self) -> None:
        if self.pca_std < 0:
            raise ConfigError(f"data.pca_std must be >= 0, got {self.pca_std}")
        if self.pad < 0:
            raise ConfigError(f"data.pad must be >= 0, got {self.pad}")
        if self.cutout < 0:
            raise ConfigError(f"data.cutout must be >= 0 (0 = off), got {self.cutout}")
        if self.workers != "auto" and self.workers < 0:
            raise ConfigError(f"data.workers must be >= 0, got {self.workers}")
        if self.crop is not None and self.crop < 1:
            raise ConfigError(f"data.crop must be >= 1, got {self.crop}")
        if self.crop is not None and self.cutout > self.crop:
            raise ConfigError(
                f"data.cutout={self.cutout} is larger than the crop (data.crop={self.crop})"
            )
        if self.limit_train < 0:
            raise ConfigError(f"data.limit_train must be >= 0, got {self.limit_train}")


@dataclasses.dataclass
class OptimConfig:
    """SGD (§5): batch 128, momentum 0.9, weight decay 0.0005, lr 0.01."""

    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 0.0005
    # paper: v <- m v - wd lr w - lr g; w <- w + v (lr inside the velocity).
    # pytorch: v <- m v + g + wd w; w <- w - lr v (torch.optim.SGD). Equal while lr is
    # constant; they differ for a few steps after each lr drop.
    form: Literal["paper", "pytorch"] = "paper"
    nesterov: bool = False
    # Weight decay on biases and batch-norm parameters too (cuda-convnet and Caffe: no).
    decay_biases: bool = False
    # Transfer learning: lr multiplier for conv layers (0 freezes them).
    conv_lr_mult: float = 1.0
    label_smoothing: float = 0.0
    # Rescale the gradient when its global L2 norm exceeds this (0 = off; the paper has no
    # clipping). Keeps short, high-lr recipes from blowing up in their first steps.
    clip_grad_norm: float = 0.0
    # Also keep the mean of the weights at the end of each of the last N epochs (0 = off):
    # the run's average.safetensors, evaluated on the val split at the end (not in the
    # paper; Polyak averaging over epochs, as SWA does, on the run's own schedule).
    average_epochs: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.average_epochs, bool) or self.average_epochs < 0:
            raise ConfigError(
                f"optim.average_epochs must be a whole number >= 0 (0 = off), got {self.average_epochs}"
            )
        if self.clip_grad_norm < 0:
            raise ConfigError(f"optim.clip_grad_norm must be >= 0, got {self.clip_grad_norm}")
        if self.lr <= 0:
            raise ConfigError(f"optim.lr must be > 0, got {self.lr}")
        if not 0 <= self.momentum < 1:
            raise ConfigError(f"optim.momentum must be in [0, 1), got {self.momentum}")
        if self.weight_decay < 0:
            raise ConfigError(f"optim.weight_decay must be >= 0, got {self.weight_decay}")
        if self.conv_lr_mult < 0:
            raise ConfigError(f"optim.conv_lr_mult must be >= 0, got {self.conv_lr_mult}")
        if not 0 <= self.label_smoothing < 1:
            raise ConfigError(
                f"optim.label_smoothing must be in [0, 1), got {self.label_smoothing}"
            )


@dataclasses.dataclass
class ScheduleConfig:
    """Learning-rate schedule.

    plateau: §5 — divide by ``factor`` (10) when validation error has not improved by
    ``threshold`` for ``patience`` validated epochs, and not before ``min_epochs`` epochs
    at the current rate; after ``max_reductions`` (3) reductions the next plateau ends the
    run. It needs a validation split. step: multiply by ``factor`` every ``step_epochs``.
    onecycle: linear warm-up for ``warmup_epochs`` to lr, then linear decay to 0 at the
    last epoch (per step).
    """

    kind: Literal["plateau", "step", "onecycle", "constant"] = "plateau"
    factor: float = 0.1
    patience: int = 1
    max_reductions: int = 3
    threshold: float = 1e-4  # an improvement smaller than this (top-1 error) is none
    min_epochs: int = 0  # plateau: epochs at each rate before it may be divided
    step_epochs: int = 30
    warmup_epochs: float = 0.0

    def __post_init__(self) -> None:
        if not 0 < self.factor < 1:
            raise ConfigError(f"schedule.factor must be in (0, 1), got {self.factor}")
        if (
            self.patience < 0
            or self.max_reductions < 0
            or self.min_epochs < 0
            or self.step_epochs < 1
        ):
            raise ConfigError(
                "schedule.patience, schedule.max_reductions and schedule.min_epochs must be "
                ">= 0, schedule.step_epochs >= 1"
            )
        if self.threshold < 0:
            raise ConfigError(f"schedule.threshold must be >= 0, got {self.threshold}")
        if self.warmup_epochs < 0:
            raise ConfigError(f"schedule.warmup_epochs must be >= 0, got {self.warmup_epochs}")


@dataclasses.dataclass
class RunConfig:
    """How and where the run executes."""

    epochs: int = 90
    batch_size: int = 128  # global batch, split evenly across DDP ranks
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    # Training precision. auto: bf16 on GPUs that have it, fp16 + grad scaler on older GPUs;
    # on CPUs bf16 where they have native bf16 (AMX, AVX512-BF16, ARM BF16), else fp32.
    # What ran is recorded in summary.json ("execution"); policy in alexnet.engine.execution.
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    # Precision of validation and test passes (auto: the same policy as run.precision).
    eval_precision: Literal["auto", "fp32", "bf16", "fp16"] = "fp32"
    channels_last: bool = True
    compile: bool = False
    # CPU threads per rank; 0 = this rank's share of the available cores (or
    # OMP_NUM_THREADS when set, as torchrun does).
    threads: int = 0
    eval_every: int = 1  # epochs between validation passes
    checkpoint_every: int = 1  # epochs between checkpoints (always at the end)
    log_every: int = 50  # steps between loss readouts (the non-finite check, the bar's numbers)
    # Model parallel: the paper's two towers on two devices (e.g. ["cuda:0", "cuda:1"]).
    tower_devices: list[str] = dataclasses.field(default_factory=list)

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise ConfigError(f"run.epochs must be >= 1, got {self.epochs}")
        if self.threads < 0:
            raise ConfigError(f"run.threads must be >= 0, got {self.threads}")
        if self.batch_size < 1:
            raise ConfigError(f"run.batch_size must be >= 1, got {self.batch_size}")
        if self.eval_every < 1 or self.checkpoint_every < 1 or self.log_every < 1:
            raise ConfigError("run.eval_every, run.checkpoint_every and run.log_every must be >= 1")
        if self.device != "auto" and not (self.device == "cpu" or self.device.startswith("cuda")):
            raise ConfigError(
                f"run.device: {self.device!r} is not allowed; choose auto, cpu, cuda or cuda:N"
            )
        if self.tower_devices and len(self.tower_devices) != 2:
            raise ConfigError(
                f"run.tower_devices needs exactly two devices, got {self.tower_devices}"
            )


@dataclasses.dataclass
class TrainConfig:
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    optim: OptimConfig = dataclasses.field(default_factory=OptimConfig)
    schedule: ScheduleConfig = dataclasses.field(default_factory=ScheduleConfig)
    run: RunConfig = dataclasses.field(default_factory=RunConfig)
    # Weights to start from (transfer learning): our checkpoint, a safetensors export or
    # torchvision's AlexNet weights (owt). fc8 is replaced when the class count differs.
    init_from: str = ""
    freeze_conv: bool = False


PRESETS_DIR = Path(__file__).parent / "presets"


def preset_names() -> list[str]:
    return sorted(p.stem for p in PRESETS_DIR.glob("*.yaml"))


def load_train_config(
    preset: str | None = None, config_file: str | None = None, overrides: list[str] | None = None
) -> TrainConfig:
    """Preset or file, then ``--set key=value`` overrides; validated as a whole."""
    if preset and config_file:
        raise ConfigError("give either --preset or --config, not both")
    data: dict[str, Any] = {}
    if preset:
        path = PRESETS_DIR / f"{preset}.yaml"
        if not path.is_file():
            raise ConfigError(f"unknown preset {preset!r}; choose one of {preset_names()}")
        data = load_yaml(path)
    elif config_file:
        data = load_yaml(config_file)
    data = apply_overrides(data, overrides or [])
    return from_dict(TrainConfig, data)


def save_yaml(cfg: Any, path: str | Path) -> None:
    write_text(path, yaml.safe_dump(to_dict(cfg), sort_keys=False))
