"""One code path for CPU, one GPU and torchrun: the process group comes from the environment.

``torchrun`` sets RANK / WORLD_SIZE / LOCAL_RANK; a plain ``python -m`` sets none and runs as a
single process. On CPU the group uses gloo, which is how tests cover the multi-process path.

Precision: bf16 autocast (and channels-last tensors) where the hardware runs it natively -- a GPU,
or a CPU with AMX tiles or AVX512-BF16 instructions, where a resnet18 training step takes about
half the time of fp32 (benchmarks/seg_step.py: 0.53x on a Sapphire Rapids with AMX, 0.54x on an
AMD EPYC with AVX512-BF16) -- and fp32 elsewhere: without them a CPU emulates bf16 and runs slower
than in fp32. ``--precision`` overrides the choice. ``--channels-last`` asks for channels-last
also in fp32 on a CPU, where it helps depthwise-separable networks and hurts dense ones
(``python -m benchmarks.memory_format``: EfficientNet-Lite0's training step 0.82x, resnet18's 1.06x).
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import os
from dataclasses import dataclass
from typing import Iterator

import torch
import torch.distributed as dist

from stages.errors import InputError
from stages.runtime.allocator import keep_freed_memory
from stages.runtime.cpu_features import has_amx, has_avx512_bf16


@dataclass(frozen=True)
class DistContext:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    bf16: bool = False  # autocast to bfloat16, with channels-last image tensors and weights
    cpu_channels_last: bool = False  # channels-last in fp32 on a CPU too (--channels-last)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def on_gpu(self) -> bool:
        return self.device.type == "cuda"

    @property
    def channels_last(self) -> bool:
        """Whether images and weights go channels-last: what the GPU and oneDNN's bf16 kernels want,
        and oneDNN's fp32 depthwise convolutions where asked for."""
        return self.on_gpu or self.bf16 or self.cpu_channels_last

    def images(self, x: torch.Tensor) -> torch.Tensor:
        """An image batch (N, 3, H, W) on this device, in the memory layout it computes in."""
        x = x.to(self.device, non_blocking=True)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x


PRECISIONS = ("auto", "fp32", "bf16")


def add_device_arguments(parser: argparse.ArgumentParser) -> None:
    """--device, --precision and --channels-last, the flags every stage that runs a network takes."""
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--precision", choices=PRECISIONS, default="auto",
                        help="auto: bf16 on a GPU or a CPU with AMX or AVX512-BF16, else fp32")
    parser.add_argument("--channels-last", action="store_true",
                        help="channels-last tensors in fp32 on a CPU too (always on a GPU and in bf16)")


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` runs bf16 convolutions natively (a CUDA GPU; a CPU with AMX tiles, Intel
    Sapphire Rapids and later, or with AVX512-BF16 dot products, e.g. AMD Zen 4)."""
    return device.type == "cuda" or has_amx() or has_avx512_bf16()


def use_bf16(device: torch.device, requested: str) -> bool:
    if requested not in PRECISIONS:
        raise InputError(f"precision {requested!r} is not one of {', '.join(PRECISIONS)}")
    return requested == "bf16" or (requested == "auto" and native_bf16(device))


def pick_device(local_rank: int = 0, requested: str = "auto") -> torch.device:
    """``auto`` takes the GPU of this local rank when there is one, else the CPU."""
    if requested == "cpu" or (requested == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise InputError(f"device {requested!r} requested but CUDA is not available")
    return torch.device("cuda", local_rank)


def init_distributed(requested_device: str = "auto", precision: str = "auto",
                     channels_last: bool = False) -> DistContext:
    """This process's place in the group, its device and precision; its freed memory is kept for
    reuse (``allocator``), as every stage that runs a network wants."""
    keep_freed_memory()
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = pick_device(local_rank, requested_device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return DistContext(rank, world_size, local_rank, device, use_bf16(device, precision), channels_last)


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
    """bf16 autocast where ``ctx`` says so (see the module docstring), else full precision."""
    if ctx.bf16:
        return torch.autocast(ctx.device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def inference_copy(model: torch.nn.Module, ctx: DistContext) -> torch.nn.Module:
    """``model`` as ``ctx`` runs it for inference passes under ``autocast``: where it computes in
    bf16, a copy with bf16 weights; where it wants channels-last, in that layout. ``model`` itself
    is left alone (a network still in training keeps its fp32 weights and ordinary parameters).

    Autocast casts the weights of a network without gradients again at every pass, and those of
    one with gradients at every autocast block: `python -m benchmarks.inference_copy` (resnet18 +
    MLP, toy-sized images, 1 thread) gave 0.57x autocast's time at one image a pass, 0.81x at 8.
    """
    if not (ctx.bf16 or ctx.channels_last):
        return model
    frozen = copy.deepcopy(model)
    if ctx.bf16:
        frozen.to(dtype=torch.bfloat16)
    if ctx.channels_last:
        frozen.to(memory_format=torch.channels_last)
    return frozen


@contextlib.contextmanager
def distributed_session(requested_device: str = "auto", precision: str = "auto",
                        channels_last: bool = False) -> Iterator[DistContext]:
    ctx = init_distributed(requested_device, precision, channels_last)
    try:
        yield ctx
    finally:
        shutdown_distributed()
