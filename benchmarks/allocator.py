"""Training steps with glibc's default malloc thresholds against ``keep_freed_memory``'s fixed ones.

    python -m benchmarks.allocator [--rounds 3] [--steps 10]

The thresholds are set once per process, so each measurement is its own process (one torch
thread), the two kinds taking turns ``--rounds`` times: the default segmenter step (``ce``,
resnet18 + MLP 64, bf16 where native, 96 px crops) and the CAM network step (128 px crops), each
the median of ``--steps`` timed steps after two untimed ones, with the page faults per step
(``ru_minflt``). Prints every process's figures and the ratio of the medians.
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import resource

import torch

from benchmarks.matmul_conv import CamStepper
from benchmarks.seg_step import Config, Stepper
from stages.runtime.allocator import keep_freed_memory
from stages.runtime.distributed import native_bf16

WARMUP = 2


def _measure(kept: bool, steps: int, result: mp.Queue) -> None:
    if kept:
        keep_freed_memory()
    torch.set_num_threads(1)
    precision = "bf16" if native_bf16(torch.device("cpu")) else "fp32"
    figures = []
    for stepper in (Stepper(Config("mlp", 64, precision, 96), 16), CamStepper(128, bf16=precision == "bf16")):
        for _ in range(WARMUP):
            stepper.step()
        faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        times = sorted(stepper.step() for _ in range(steps))
        figures.append((times[len(times) // 2], (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults) / steps))
    result.put(figures)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--steps", type=int, default=10)
    args = p.parse_args(argv)
    ctx = mp.get_context("spawn")
    runs: dict[bool, list] = {False: [], True: []}
    print("| round | malloc | segmenter s/step | faults/step | CAM network s/step | faults/step |")
    print("|---|---|---|---|---|---|")
    for r in range(1, args.rounds + 1):
        for kept in (False, True):
            queue = ctx.Queue()
            process = ctx.Process(target=_measure, args=(kept, args.steps, queue))
            process.start()
            (seg, seg_faults), (cam, cam_faults) = queue.get()
            process.join()
            runs[kept].append((seg, cam))
            malloc = "kept" if kept else "default"
            print(f"| {r} | {malloc} | {seg:.3f} | {seg_faults:.0f} | {cam:.3f} | {cam_faults:.0f} |")
    for i, name in enumerate(("segmenter", "CAM network")):
        default, kept = (sorted(x[i] for x in runs[k])[args.rounds // 2] for k in (False, True))
        print(f"{name}: median step {default:.3f} s with glibc's defaults, {kept:.3f} s kept ({kept / default:.2f}x)")


if __name__ == "__main__":
    main()
