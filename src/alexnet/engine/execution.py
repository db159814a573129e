"""How a run executes on the machine it lands on: precision, threads, loader workers.

``auto`` settings are resolved here, once, from the hardware (:mod:`alexnet.hardware`),
and what was resolved is recorded with the run
(:func:`execution_record`), so a result always says what actually ran.

The precision policy (``run.precision: auto``):
- CUDA: bf16 autocast where the GPU computes bf16 natively (Ampere and later), else fp16
  with a gradient scaler.
- CPU: bf16 autocast where the CPU has native bf16 (AMX, AVX512-BF16, ARM BF16) and fp32
  elsewhere (emulated bf16 ran ~10x slower than fp32 on an AVX2 CPU). On an AMX Xeon bf16
  trained the demo 1.5x and CIFAR-10 2.1x faster than fp32 to the same accuracy within
  seed-to-seed noise (README "Precision", with the commands).
- Evaluation (``run.eval_precision``) is fp32 by default wherever training ran, so
  reported accuracy does not depend on the training precision.
Master weights and the optimizer step stay fp32 in every case (autocast casts copies);
the loss, softmax and LRN's normalisation are computed in fp32.
"""

from __future__ import annotations

import dataclasses
import os
import platform
from typing import Any

import torch

from .. import allocator, hardware
from ..config import ConfigError
from ..hardware import resolve_workers

_DTYPES: dict[str, torch.dtype | None] = {
    "fp32": None,
    "bf16": torch.bfloat16,
    "fp16": torch.float16,
}


@dataclasses.dataclass(frozen=True)
class Precision:
    """A resolved precision: what runs, what was asked for, and why."""

    name: str  # fp32 | bf16 | fp16: what actually runs
    requested: str  # the config's value (auto or one of the above)
    reason: str

    @property
    def autocast_dtype(self) -> torch.dtype | None:
        return _DTYPES[self.name]

    @property
    def needs_scaler(self) -> bool:
        return self.name == "fp16"


def _cuda_bf16(device: torch.device) -> bool:
    try:
        return torch.cuda.is_bf16_supported(including_emulation=False)
    except TypeError:  # older torch without the keyword
        return torch.cuda.get_device_capability(device)[0] >= 8


def _check_device(device: torch.device) -> None:
    if device.type not in ("cpu", "cuda"):
        raise ConfigError(f"device {device.type!r} is not supported; use cpu or cuda")


def available_precisions(device: torch.device) -> dict[str, str]:
    """Precision -> how it runs on ``device``, for every precision that can run there."""
    _check_device(device)
    if device.type == "cuda":
        out = {"fp32": "fp32 (TF32 matmuls)", "fp16": "fp16 autocast + grad scaler"}
        if _cuda_bf16(device):
            out["bf16"] = "bf16 autocast"
        return out
    native = hardware.cpu_bf16()
    return {
        "fp32": "fp32",
        "bf16": f"bf16 autocast ({f'native: {native}' if native else 'emulated, slow'})",
    }


def resolve_precision(
    requested: str, device: torch.device, key: str = "run.precision"
) -> Precision:
    """The precision ``requested`` means on ``device``; an error naming ``key`` and what is
    available where it cannot run (fp16 on CPU, bf16 on a GPU without native bf16)."""
    _check_device(device)
    if requested == "auto":
        if device.type == "cuda":
            if _cuda_bf16(device):
                return Precision("bf16", requested, "auto: the GPU computes bf16 natively")
            return Precision("fp16", requested, "auto: the GPU has no native bf16")
        native = hardware.cpu_bf16()
        if native:
            return Precision("bf16", requested, f"auto: the CPU has native bf16 ({native})")
        if capped := hardware.bf16_capped_by():
            feature = hardware.cpu_bf16_feature()
            why = f"no native bf16 for oneDNN: {capped} leaves out the CPU's {feature}"
        else:
            why = "the CPU has no native bf16"
        return Precision("fp32", requested, f"auto: {why} (emulated is slow)")
    available = available_precisions(device)
    if requested not in _DTYPES:
        raise ConfigError(
            f"{key}: {requested!r} is not a precision; choose auto or {list(_DTYPES)}"
        )
    if requested not in available:
        where = torch.cuda.get_device_name(device) if device.type == "cuda" else "the CPU"
        why = (
            "fp16 autocast runs on CUDA devices only here"
            if requested == "fp16"
            else "this GPU has no native bf16 (Ampere or newer has)"
        )
        raise ConfigError(
            f"{key}={requested} cannot run on {device.type} ({where}): {why}; available here: "
            + ", ".join(f"{k} ({v})" for k, v in available.items())
            + ", or auto"
        )
    return Precision(requested, requested, "as configured")


def resolve_threads(requested: int) -> int:
    """``run.threads``: 0 = this rank's share of the cores it may run on, at most
    PyTorch's own default (physical cores: SMT siblings add little to GEMMs), unless
    OMP_NUM_THREADS is set (torchrun sets it to 1 for several ranks per node)."""
    if requested > 0:
        return requested
    if os.environ.get("OMP_NUM_THREADS"):
        return hardware.TORCH_DEFAULT_THREADS
    return min(hardware.cores_per_rank(), hardware.TORCH_DEFAULT_THREADS)


def _device_facts(device: torch.device) -> dict[str, Any]:
    return {
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else hardware.cpu_model(),
        "cores_available": hardware.available_cores(),
        "cpu_bf16": hardware.cpu_bf16_label(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
    }


def resolve_decode(requested: str, device: torch.device) -> tuple[str, str]:
    """Where JPEG data is decoded (``data.decode``) and why: ``cpu`` (loader workers) or
    ``cuda`` (nvJPEG on the training GPU)."""
    if requested == "cuda" and device.type != "cuda":
        raise ConfigError(
            f"data.decode=cuda decodes on the training GPU, but this run trains on {device}: "
            "set data.decode=cpu (or auto), or run.device=cuda on a machine with a GPU"
        )
    if requested != "auto":
        return requested, "as configured"
    # On an H100 the CPU workers trained faster end to end than nvJPEG at 256 px
    # (benchmarks/README.md, `alexnet benchmark e2e --device cuda`).
    return "cpu", "auto: loader workers"


def execution_record(
    device: torch.device,
    precision: Precision,
    eval_precision: Precision,
    workers: int,
    world_size: int = 1,
    conv_impl: dict[str, Any] | None = None,
    eval_conv_impl: dict[str, Any] | None = None,
    channels_last: bool = True,
    compile: bool = False,
    decode: str = "cpu",
) -> dict[str, Any]:
    """What ran, for summary.json, checkpoints and the report. ``conv_impl``: each conv
    layer's implementation in the training step and why (:func:`alexnet.network.fourier.conv_decisions`);
    ``eval_conv_impl``: the same for evaluation, recorded where it differs."""
    from ..network import native

    record: dict[str, Any] = {
        **_device_facts(device),
        "precision": precision.name,
        "precision_requested": precision.requested,
        "precision_reason": precision.reason,
        "eval_precision": eval_precision.name,
        "threads": torch.get_num_threads(),
        "host_memory": allocator.describe(),
        "loader_workers": workers,
        "decode": decode,
        "world_size": world_size,
        "channels_last": channels_last,
        "compile": compile,
        "lrn": native.lrn_path(device, precision.autocast_dtype, channels_last),
        "torch": str(torch.__version__),
    }
    if conv_impl is not None:
        record["conv_impl"] = conv_impl
    if eval_conv_impl is not None and eval_conv_impl != conv_impl:
        record["eval_conv_impl"] = eval_conv_impl
    return record


def execution_plan(device: torch.device) -> dict[str, Any]:
    """What ``auto`` resolves to on this machine, before any run (`alexnet info`)."""
    from ..network import native

    auto = resolve_precision("auto", device)
    return {
        **_device_facts(device),
        "precision_auto": auto.name,
        "precision_reason": auto.reason,
        "precisions_available": available_precisions(device),
        "eval_precision_default": "fp32",
        "threads_auto": resolve_threads(0),
        "loader_workers_auto": resolve_workers("auto", accelerator=device.type != "cpu"),
        "decode_auto": resolve_decode("auto", device)[0],
        "host_memory": allocator.describe(),
        "lrn": {
            name: native.lrn_path(device, _DTYPES[name]) for name in available_precisions(device)
        },
        "native": native.status(),
    }


def format_plan(plan: dict[str, Any]) -> str:
    lrn = "; ".join(f"{k}: {v}" for k, v in plan["lrn"].items())
    available = ", ".join(plan["precisions_available"])
    return "\n".join(
        [
            f"on this machine ({plan['device']}: {plan['device_name']}):",
            f"  run.precision auto -> {plan['precision_auto']} ({plan['precision_reason']}); "
            f"available: {available}; evaluation: {plan['eval_precision_default']}",
            f"  run.threads 0 -> {plan['threads_auto']} of {plan['cores_available']} cores; "
            f"data.workers auto -> {plan['loader_workers_auto']}; data.decode auto -> "
            f"{plan['decode_auto']}",
            f"  CPU bf16: {plan['cpu_bf16']}, PyTorch CPU capability {plan['cpu_capability']}",
            f"  LRN: {lrn}",
            f"  host memory: {plan['host_memory']}",
        ]
    )


def machine_info() -> dict[str, Any]:
    """The machine as runs, benchmarks and reports record it."""
    from ..network import native

    return {
        "cpu": hardware.cpu_model(),
        "cores": hardware.available_cores(),
        "threads": torch.get_num_threads(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cpu_bf16": hardware.cpu_bf16_label(),
        "torch": str(torch.__version__),
        "python": platform.python_version(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "native": native.status(),
        "host_memory": allocator.describe(),
    }
