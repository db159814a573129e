"""Process-group setup for torchrun (DDP): gloo on CPU, NCCL on GPUs, one node or many.

torchrun sets RANK, WORLD_SIZE, LOCAL_RANK and the rendezvous; a plain ``python`` run is
a world of one and needs no process group. A torchrun of one process joins a group all the
same, so that it runs the code a larger world runs (DDP, the all-reduces).

Every collective here runs on tensors on the rank's training device: NCCL has no CPU
tensors, so a flag or sum built on the host would fail on the first step on GPUs.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import torch
import torch.distributed as dist


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    group: bool = False  # joined a process group (torchrun), even a world of one

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1 or self.group


def resolve_device(preference: str, local_rank: int = 0) -> torch.device:
    if preference == "auto":
        return (
            torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
        )
    if preference.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ValueError(
                f"run.device={preference!r} but no CUDA device is available; use cpu or auto"
            )
        if preference == "cuda":
            return torch.device(f"cuda:{local_rank}")
    return torch.device(preference)


def setup(device_preference: str = "auto") -> DistInfo:
    """Join the process group torchrun prepared (if any) and pick this rank's device."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(device_preference, local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    launched = world > 1 or "TORCHELASTIC_RUN_ID" in os.environ  # torchrun sets it
    if launched and not dist.is_initialized():
        if device.type == "cuda":
            # device_id binds the communicator to this rank's GPU at once (no guessing
            # from the current device at the first collective).
            dist.init_process_group("nccl", rank=rank, world_size=world, device_id=device)
        else:
            dist.init_process_group("gloo", rank=rank, world_size=world)
    return DistInfo(rank, world, local_rank, device, group=dist.is_initialized())


def cleanup() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    if dist.is_initialized():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def all_reduce_max(t: torch.Tensor) -> torch.Tensor:
    if dist.is_initialized():
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return t


def barrier() -> None:
    if dist.is_initialized():
        if dist.get_backend() == "nccl":
            dist.barrier(device_ids=[torch.cuda.current_device()])
        else:
            dist.barrier()
