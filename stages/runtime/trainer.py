"""The training loop every trainer shares: resumable, deterministic, guarded against NaN.

A method supplies only ``step_fn(model, batch) -> {"loss": ..., other terms}``; this loop owns
data order, AMP, DDP, checkpoints, the metrics CSV, progress and signals. Data order is a pure
function of (seed, epoch), and datasets derive their augmentation randomness from
(seed, epoch, index) via ``set_epoch``, so a run resumed from a checkpoint replays exactly the
batches an uninterrupted run would have seen.
"""
from __future__ import annotations

import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import pandas as pd
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from stages.io.atomic import atomic_path
from stages.io.checkpoint import load_checkpoint, save_checkpoint
from stages.runtime.distributed import DistContext, all_reduce_sum, autocast
from stages.runtime.progress import progress_bar

StepFn = Callable[[torch.nn.Module, dict[str, torch.Tensor]], dict[str, torch.Tensor]]


class NonFiniteLossError(RuntimeError):
    pass


class Interrupted(SystemExit):
    """Raised after a SIGTERM/SIGINT once the state is checkpointed; exit code 143 like a kill."""

    def __init__(self) -> None:
        super().__init__(143)


@dataclass
class LoopConfig:
    steps: int
    batch_size: int  # per process
    checkpoint_every: int
    seed: int = 0
    num_workers: int = 0
    on_nonfinite: str = "stop"  # "stop" or "skip"
    max_skipped: int = 10


class EpochBatchSampler(Sampler[list[int]]):
    """Batches of one epoch for one rank, from a seeded permutation; can start mid-epoch."""

    def __init__(self, n: int, batch_size: int, seed: int, epoch: int, rank: int, world: int,
                 start_batch: int = 0) -> None:
        g = torch.Generator().manual_seed(seed * 100003 + epoch)
        order = torch.randperm(n, generator=g).tolist()
        per_rank = len(order) // world
        mine = order[rank * per_rank:(rank + 1) * per_rank]
        self.batches = [mine[i:i + batch_size] for i in range(0, per_rank - batch_size + 1, batch_size)]
        self.batches = self.batches[start_batch:]

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


def steps_per_epoch(n: int, batch_size: int, world: int) -> int:
    spe = (n // world) // batch_size
    if spe == 0:
        raise ValueError(f"{n} training images cannot fill one batch of {batch_size} on {world} process(es)")
    return spe


def _move(batch: dict[str, Any], ctx: DistContext) -> dict[str, Any]:
    out = {}
    for k, v in batch.items():
        if isinstance(v, torch.Tensor):
            v = v.to(ctx.device, non_blocking=True)
            if ctx.on_gpu and v.dim() == 4 and v.is_floating_point():
                v = v.contiguous(memory_format=torch.channels_last)
        out[k] = v
    return out


class _StopFlag:
    """Turns SIGTERM/SIGINT into a flag checked between steps, so the step finishes and is saved."""

    def __init__(self) -> None:
        self.raised = False
        self._old = {}

    def __enter__(self) -> "_StopFlag":
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        self.raised = True

    def __exit__(self, *exc) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)


def all_finite(module: torch.nn.Module) -> bool:
    return all(torch.isfinite(p).all() for p in module.parameters())


def train_loop(model: torch.nn.Module, optimizer: torch.optim.Optimizer,
               scheduler: torch.optim.lr_scheduler.LRScheduler, dataset: Dataset, step_fn: StepFn,
               cfg: LoopConfig, ctx: DistContext, checkpoint_path: Path, metrics_path: Path,
               meta: dict[str, Any], collate_fn: Callable | None = None) -> list[dict[str, Any]]:
    """Run until ``cfg.steps``; resume from ``checkpoint_path`` if it exists. Returns the metric rows.

    ``model`` is the bare module; it is wrapped in DDP here when the process group has several
    ranks. ``meta`` (backbone, classes, hyperparameters) goes into every checkpoint; a checkpoint
    whose meta differs is ignored, so changed settings train from scratch instead of resuming.
    The metric rows live in the checkpoint and the CSV is written only at the end: a killed job
    then leaves no output file behind, and Snakemake deletes a failed job's outputs anyway.
    """
    model.to(ctx.device)
    if ctx.on_gpu:
        model.to(memory_format=torch.channels_last)
    step, rows, skipped = 0, [], 0
    if checkpoint_path.exists():
        state = load_checkpoint(checkpoint_path)
        if state.get("meta") == meta:
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            torch.set_rng_state(state["torch_rng"])
            step, skipped, rows = state["step"], state["skipped"], state["rows"]
            if ctx.is_main:
                print(f"resuming from {checkpoint_path} at step {step}/{cfg.steps}", file=sys.stderr)
        elif ctx.is_main:
            # The workflow re-runs a stage when its parameters change: start over, don't resume.
            print(f"{checkpoint_path} was made with other settings; starting from step 0", file=sys.stderr)
    net = model
    if ctx.distributed:
        net = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[ctx.device.index] if ctx.on_gpu else None)

    def checkpoint() -> None:
        if ctx.is_main:
            save_checkpoint(checkpoint_path, {
                "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "torch_rng": torch.get_rng_state(),
                "step": step, "skipped": skipped, "rows": rows, "meta": meta})

    spe = steps_per_epoch(len(dataset), cfg.batch_size, ctx.world_size)
    bar = progress_bar(total=cfg.steps, initial=step, disable=not ctx.is_main, desc="train", unit="step")
    net.train()
    with _StopFlag() as stop:
        while step < cfg.steps:
            epoch, start = divmod(step, spe)
            if hasattr(dataset, "set_epoch"):
                dataset.set_epoch(epoch)
            sampler = EpochBatchSampler(len(dataset), cfg.batch_size, cfg.seed, epoch,
                                        ctx.rank, ctx.world_size, start)
            loader = DataLoader(dataset, batch_sampler=sampler, num_workers=cfg.num_workers,
                                collate_fn=collate_fn, pin_memory=ctx.on_gpu)
            tic = time.perf_counter()
            for batch in loader:
                batch = _move(batch, ctx)
                with autocast(ctx):
                    terms = step_fn(net, batch)
                loss = terms["loss"]
                bad = torch.tensor([0.0 if torch.isfinite(loss) else 1.0], device=ctx.device)
                if all_reduce_sum(bad, ctx).item() > 0:
                    if cfg.on_nonfinite != "skip" or skipped >= cfg.max_skipped:
                        raise NonFiniteLossError(
                            f"non-finite loss at step {step + 1} ({ {k: float(v.detach()) for k, v in terms.items()} }); "
                            f"last good checkpoint: {checkpoint_path if checkpoint_path.exists() else 'none'}")
                    skipped += 1
                    optimizer.zero_grad(set_to_none=True)
                    print(f"step {step + 1}: non-finite loss, skipped ({skipped} so far)", file=sys.stderr)
                    continue
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                lr = optimizer.param_groups[0]["lr"]  # the rate this step used
                optimizer.step()
                scheduler.step()
                step += 1
                elapsed = time.perf_counter() - tic
                tic = time.perf_counter()
                rows.append({"step": step, "epoch": epoch,
                             **{k: float(v.detach()) for k, v in terms.items()},
                             "lr": lr,
                             "img_per_s": cfg.batch_size * ctx.world_size / max(elapsed, 1e-9),
                             "skipped": skipped})
                bar.update(1)
                bar.set_postfix(loss=f"{rows[-1]['loss']:.4f}", refresh=False)
                if step % cfg.checkpoint_every == 0 or step == cfg.steps:
                    checkpoint()
                if stop.raised:
                    checkpoint()
                    print(f"interrupted at step {step}; checkpoint saved to {checkpoint_path}", file=sys.stderr)
                    raise Interrupted()
                if step >= cfg.steps:
                    break
    bar.close()
    if not all_finite(model):
        raise NonFiniteLossError(f"training ended with non-finite weights; {checkpoint_path} kept")
    if ctx.is_main:
        with atomic_path(metrics_path) as tmp:
            pd.DataFrame(rows).to_csv(tmp, index=False)
    return rows
