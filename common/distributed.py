"""Joining a torchrun job (or running alone) for the sampling scripts: one rank per process, NCCL on CUDA, gloo on CPU.

setup = setup_distributed(args.device)
try:
    mine = work[setup.rank :: setup.world_size]
    ...
    setup.barrier()
finally:
    setup.close()
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from .cli import parse_device

__all__ = ["BARRIER_TIMEOUT", "Distributed", "launched_world_size", "resolve_device", "setup_distributed"]

BARRIER_TIMEOUT = datetime.timedelta(hours=24)
"""Ranks wait at the final barrier for the slowest one, which may have hours of work left."""


@dataclass(frozen=True)
class Distributed:
    """This process's place in the job; ``initialized`` is False for a plain single process (no process group)."""

    rank: int
    world_size: int
    device: torch.device
    initialized: bool

    def barrier(self) -> None:
        if self.initialized:
            dist.barrier()

    def close(self) -> None:
        if self.initialized:
            dist.destroy_process_group()


def launched_world_size() -> int:
    """torchrun's WORLD_SIZE, or 1 outside torchrun; readable before the process group exists."""
    return int(os.environ["WORLD_SIZE"]) if _launched() else 1


def _launched() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def resolve_device(device_arg: str | None, local_rank: int | None, cuda_available: bool) -> torch.device:
    """The device of one process. ``local_rank`` is torchrun's LOCAL_RANK, None outside torchrun. None picks
    cuda:LOCAL_RANK (cuda:0 alone) when CUDA is available, else the CPU; an index-less "cuda" under torchrun also
    means cuda:LOCAL_RANK, since otherwise every rank of the node would share cuda:0."""
    if device_arg is None:
        return torch.device(f"cuda:{local_rank or 0}" if cuda_available else "cpu")
    device = torch.device(device_arg)
    if device.type == "cuda" and device.index is None and local_rank is not None:
        return torch.device("cuda", local_rank)
    return device


def setup_distributed(device_arg: str | None) -> Distributed:
    """Join torchrun's process group (NCCL on CUDA, gloo on CPU); without torchrun's variables, one plain process.
    The device is :func:`resolve_device`'s: cuda:LOCAL_RANK for None (with CUDA) or "cuda" under torchrun."""
    parse_device(device_arg)  # a device this machine lacks ends in one message before the process group forms
    launched = _launched()
    local_rank = int(os.environ.get("LOCAL_RANK", 0)) if launched else None
    device = resolve_device(device_arg, local_rank, torch.cuda.is_available())
    if device.type == "cuda" and device.index is not None:
        torch.cuda.set_device(device)  # NCCL's collectives run on the current device
    if not launched:
        return Distributed(rank=0, world_size=1, device=device, initialized=False)
    dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo", timeout=BARRIER_TIMEOUT)
    return Distributed(rank=dist.get_rank(), world_size=dist.get_world_size(), device=device, initialized=True)
