"""One code path for CPU, one GPU and torchrun: the process group comes from the environment.

``torchrun`` sets RANK / WORLD_SIZE / LOCAL_RANK; a plain ``python -m`` sets none and runs as a
single process. On CPU the group uses gloo, which is how tests cover the multi-process path.
"""
from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import Iterator

import torch
import torch.distributed as dist

from stages.errors import InputError


@dataclass(frozen=True)
class DistContext:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def on_gpu(self) -> bool:
        return self.device.type == "cuda"


def pick_device(local_rank: int = 0, requested: str = "auto") -> torch.device:
    """``auto`` takes the GPU of this local rank when there is one, else the CPU."""
    if requested == "cpu" or (requested == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise InputError(f"device {requested!r} requested but CUDA is not available")
    return torch.device("cuda", local_rank)


def init_distributed(requested_device: str = "auto") -> DistContext:
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = pick_device(local_rank, requested_device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return DistContext(rank, world_size, local_rank, device)


def shutdown_distributed() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier(ctx: DistContext) -> None:
    if ctx.distributed:
        dist.barrier()


def all_reduce_sum(tensor: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    """Sum over processes in place (identity when single-process)."""
    if ctx.distributed:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def autocast(ctx: DistContext) -> contextlib.AbstractContextManager:
    """bf16 autocast on GPU; full precision on CPU, where bf16 is slow and changes results."""
    if ctx.on_gpu:
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


@contextlib.contextmanager
def distributed_session(requested_device: str = "auto") -> Iterator[DistContext]:
    ctx = init_distributed(requested_device)
    try:
        yield ctx
    finally:
        shutdown_distributed()
