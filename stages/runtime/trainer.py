"""The training loop every trainer shares: resumable, deterministic, guarded against NaN.

A method supplies hooks (``stages.runtime.hooks.TrainHooks``: its step, optionally its own
optimisers, state and callbacks); this loop owns data order, gradient accumulation, AMP, DDP,
checkpoints, the metrics CSV, progress and signals. Data order is a pure function of
(seed, epoch), and datasets derive their augmentation randomness from (seed, epoch, index) via
``set_epoch``; every process's torch RNG state and the method's own state are checkpointed, so a
run resumed from a checkpoint replays exactly what an uninterrupted run would have done.
"""
from __future__ import annotations

import contextlib
import signal
import sys
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import pandas as pd
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset

from stages.errors import InputError
from stages.io.atomic import atomic_path
from stages.io.checkpoint import load_resumable, save_checkpoint
from stages.runtime.distributed import DistContext, autocast, barrier
from stages.runtime.hooks import NonFiniteStep, Optimization, StepContext, TrainHooks, check_finite
from stages.runtime.progress import progress_bar
from stages.runtime.sampling import EpochBatchSampler, repeat_factors, steps_per_epoch
from stages.runtime.settings import TrainSettings

CHECKPOINT_FORMAT = 2  # model, optimizers, schedulers, per-rank RNG, hooks' state


class NonFiniteLossError(RuntimeError):
    pass


class Interrupted(SystemExit):
    """Raised after a SIGTERM/SIGINT once the state is checkpointed; exit code 143 like a kill."""

    def __init__(self) -> None:
        super().__init__(143)


def _move(batch: dict[str, Any], ctx: DistContext) -> dict[str, Any]:
    out = {}
    for k, v in batch.items():
        if isinstance(v, torch.Tensor):
            v = ctx.images(v) if v.dim() == 4 and v.is_floating_point() else v.to(ctx.device, non_blocking=True)
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


def learning_rates(optimizations: list[Optimization]) -> dict[str, float]:
    """``lr`` (the first group's, which the curves plot) and the rate of every param group."""
    rates = {"lr": optimizations[0].optimizer.param_groups[0]["lr"]}
    for i, o in enumerate(optimizations):
        prefix = f"lr_o{i}_" if len(optimizations) > 1 else "lr_"
        rates.update({f"{prefix}g{j}": g["lr"] for j, g in enumerate(o.optimizer.param_groups)})
    return rates


def _rng_states(ctx: DistContext) -> list[torch.Tensor]:
    """Every process's torch RNG state (rank order): sampling methods draw on each rank."""
    state = torch.get_rng_state()
    if not ctx.distributed:
        return [state]
    states: list[Any] = [None] * ctx.world_size
    dist.all_gather_object(states, state)
    return states


def _wrap(model: torch.nn.Module, hooks: TrainHooks, ctx: DistContext) -> torch.nn.Module:
    if not ctx.distributed:
        return model
    return torch.nn.parallel.DistributedDataParallel(
        model, device_ids=[ctx.device.index] if ctx.on_gpu else None,
        find_unused_parameters=hooks.find_unused_parameters)


def _forward_backward(net: torch.nn.Module, hooks: TrainHooks, batch: dict[str, Any], sctx: StepContext,
                      sync: bool) -> dict[str, torch.Tensor]:
    """One micro-batch: the method's step, then (default optimisation) backward of its share."""
    if hooks.manual_optimization:
        with autocast(sctx.dist):
            terms = hooks.training_step(net, batch, sctx)
        check_finite(terms["loss"], terms, sctx.dist)
        return terms
    no_sync = net.no_sync if (not sync and hasattr(net, "no_sync")) else contextlib.nullcontext
    with no_sync():
        with autocast(sctx.dist):
            terms = hooks.training_step(net, batch, sctx)
        check_finite(terms["loss"], terms, sctx.dist)
        (terms["loss"] / sctx.accumulation).backward()
    return terms


def _sample_weights(settings: TrainSettings, image_classes: Sequence[Sequence[int]] | None, n: int,
                    ctx: DistContext) -> torch.Tensor | None:
    """Repeat factors for ``train.class_balance`` (None: plain permutations)."""
    if settings.class_balance == 0:
        return None
    if image_classes is None:
        raise InputError("train.class_balance needs each image's classes, which this stage does not "
                         "give its trainer; set train.class_balance: 0 for it")
    if len(image_classes) != n:
        raise ValueError(f"{len(image_classes)} image class lists for {n} training items")
    weights = repeat_factors(image_classes, settings.class_balance)
    if ctx.is_main:
        print(f"class-balanced sampling (t={settings.class_balance}): repeat factors "
              f"{weights.min():.2f}-{weights.max():.2f}, mean {weights.mean():.2f}", file=sys.stderr)
    return weights


def train_loop(model: torch.nn.Module, hooks: TrainHooks, dataset: Dataset, settings: TrainSettings,
               ctx: DistContext, checkpoint_path: Path, metrics_path: Path, meta: dict[str, Any],
               collate_fn: Callable | None = None, state_dir: Path | None = None,
               output_dir: Path | None = None,
               image_classes: Sequence[Sequence[int]] | None = None) -> list[dict[str, Any]]:
    """Run until ``settings.steps``; resume from ``checkpoint_path`` if it exists (or from the
    previous checkpoint, kept beside it until the last step, when it is damaged). Returns the metric rows.

    ``model`` is the bare module; it is wrapped in DDP here when the process group has several
    ranks. ``meta`` (backbone, classes, hyperparameters) goes into every checkpoint; a checkpoint
    whose meta differs is ignored, so changed settings train from scratch instead of resuming.
    The metric rows live in the checkpoint and the CSV is written only at the end: a killed job
    then leaves no output file behind, and Snakemake deletes a failed job's outputs anyway.
    ``image_classes`` (each item's image-level classes) is what ``train.class_balance`` weighs.
    """
    model.to(ctx.device)
    if ctx.channels_last:
        model.to(memory_format=torch.channels_last)
    accumulation = settings.accumulation(ctx.world_size)
    if accumulation > 1 and hooks.manual_optimization:
        raise InputError(f"{type(hooks).__name__} runs its own optimiser steps and cannot accumulate "
                         f"gradients: leave train.effective_batch_size unset")
    optimizations = hooks.configure_optimizers(model, settings)
    meta = {**meta, "checkpoint_format": CHECKPOINT_FORMAT}
    step, rows, skipped = 0, [], 0
    resume = load_resumable(checkpoint_path)
    if resume is not None:
        state = resume.state
        if ctx.is_main:
            for problem in resume.damaged.values():
                print(f"{problem}; it is removed, and the previous checkpoint {resume.source} used instead",
                      file=sys.stderr)
        if state.get("meta") == meta:
            model.load_state_dict(state["model"])
            for o, opt_state, sched_state in zip(optimizations, state["optimizers"], state["schedulers"]):
                o.optimizer.load_state_dict(opt_state)
                o.scheduler.load_state_dict(sched_state)
            torch.set_rng_state(state["torch_rng"][ctx.rank])
            hooks.load_state_dict(state["hooks"])
            step, skipped, rows = state["step"], state["skipped"], state["rows"]
            if ctx.is_main:
                print(f"resuming from {resume.source} at step {step}/{settings.steps}", file=sys.stderr)
        elif ctx.is_main:
            # The workflow re-runs a stage when its parameters change: start over, don't resume.
            print(f"{resume.source} was made with other settings; starting from step 0", file=sys.stderr)
        if resume.damaged:
            barrier(ctx)  # every rank has read the good file; the next save keeps it as the previous
            if ctx.is_main:
                for bad in resume.damaged:
                    bad.unlink()
    net = _wrap(model, hooks, ctx)

    def checkpoint() -> None:
        rng = _rng_states(ctx)  # a collective: every rank takes part
        if ctx.is_main:
            save_checkpoint(checkpoint_path, {
                "model": model.state_dict(), "optimizers": [o.optimizer.state_dict() for o in optimizations],
                "schedulers": [o.scheduler.state_dict() for o in optimizations], "torch_rng": rng,
                "hooks": hooks.state_dict(), "step": step, "skipped": skipped, "rows": rows, "meta": meta},
                keep_previous=step < settings.steps)

    spe = steps_per_epoch(len(dataset), settings.batch_size, ctx.world_size, accumulation)
    weights = _sample_weights(settings, image_classes, len(dataset), ctx)
    sctx = StepContext(step, settings.steps, ctx, optimizations, state_dir, output_dir, accumulation)
    bar = progress_bar(total=settings.steps, initial=step, disable=not ctx.is_main, desc="train", unit="step")
    net.train()
    with _StopFlag() as stop, bar:  # the bar ends its line even when a step fails: errors start a line
        while step < settings.steps:
            epoch, start = divmod(step, spe)
            sctx.step = step
            data = hooks.dataset(dataset, sctx)
            if len(data) != len(dataset):
                raise ValueError(f"{type(hooks).__name__}.dataset changed the number of items "
                                 f"({len(dataset)} -> {len(data)}); data order needs a fixed length")
            if hasattr(data, "set_epoch"):
                data.set_epoch(epoch)
            sampler = EpochBatchSampler(len(data), settings.batch_size, accumulation, settings.seed, epoch,
                                        ctx.rank, ctx.world_size, start, weights)
            # its own generator: an iterator draws its workers' base seed from it, and a draw from
            # torch's global RNG would shift a resumed run's stream (a new iterator at the resume step)
            loader = DataLoader(data, batch_sampler=sampler, num_workers=settings.num_workers,
                                collate_fn=collate_fn, pin_memory=ctx.on_gpu,
                                generator=torch.Generator().manual_seed(settings.seed * 100_003 + epoch))
            micro: list[dict[str, torch.Tensor]] = []
            drop = 0  # micro-batches left of a skipped step
            tic = time.perf_counter()
            for batch in loader:
                if drop:
                    drop -= 1
                    continue
                sctx.step = step
                if not micro and not hooks.manual_optimization:
                    for o in optimizations:
                        o.optimizer.zero_grad(set_to_none=True)
                try:
                    terms = _forward_backward(net, hooks, _move(batch, ctx), sctx,
                                              sync=len(micro) + 1 == accumulation)
                except NonFiniteStep as exc:
                    if settings.on_nonfinite != "skip" or skipped >= settings.max_skipped:
                        raise NonFiniteLossError(
                            f"non-finite loss at step {step + 1} ({exc.terms}); last good checkpoint: "
                            f"{checkpoint_path if checkpoint_path.exists() else 'none'}") from None
                    skipped += 1
                    drop, micro = accumulation - len(micro) - 1, []
                    for o in optimizations:
                        o.optimizer.zero_grad(set_to_none=True)
                    print(f"step {step + 1}: non-finite loss, skipped ({skipped} so far)", file=sys.stderr)
                    continue
                micro.append({k: v.detach() for k, v in terms.items()})
                if len(micro) < accumulation:
                    continue
                rates = learning_rates(optimizations)  # the rates this step used
                for o in optimizations:
                    if not hooks.manual_optimization:
                        o.optimizer.step()
                    o.scheduler.step()
                hooks.after_step(model, sctx)
                step += 1
                elapsed, tic = time.perf_counter() - tic, time.perf_counter()
                rows.append({"step": step, "epoch": epoch,
                             **{k: float(sum(float(m[k]) for m in micro) / len(micro)) for k in micro[0]},
                             **rates,
                             "img_per_s": settings.batch_size * ctx.world_size * accumulation / max(elapsed, 1e-9),
                             "skipped": skipped})
                micro = []
                bar.update(1)
                bar.set_postfix(loss=f"{rows[-1]['loss']:.4f}", refresh=False)
                callback = hooks.every_n_steps > 0 and step % hooks.every_n_steps == 0
                if callback:
                    hooks.on_every_n_steps(model, sctx)
                if callback or step % settings.checkpoint_every == 0 or step == settings.steps:
                    checkpoint()
                if stop.raised:
                    checkpoint()
                    print(f"interrupted at step {step}; checkpoint saved to {checkpoint_path}", file=sys.stderr)
                    raise Interrupted()
                if step >= settings.steps or callback:
                    break  # a callback may have changed the data: rebuild the loader
    if not all_finite(model):
        raise NonFiniteLossError(f"training ended with non-finite weights; {checkpoint_path} kept")
    sctx.step = step
    hooks.on_train_end(model, sctx)
    if ctx.is_main:
        with atomic_path(metrics_path) as tmp:
            pd.DataFrame(rows).to_csv(tmp, index=False)
    return rows
