"""The segmenter's training step by decoder, width, precision and crop; two ways of spending two cores.

    python -m benchmarks.seg_step [--configs aspp:256:fp32:128,...,mlp:64:bf16:96] [--batch 16]
                                  [--steps 8] [--threads 1] [--cores 2]

Part 1: one ``ce`` step (forward, loss, backward, SGD step) of resnet18 for each configuration
``decoder:width:precision:crop`` (bf16 = autocast with channels-last tensors, as the trainer
runs it where ``precision`` resolves to bf16), on one synthetic batch, the configurations' steps
alternating so that a change of load hits them alike; the first two of each are not timed. The
first configuration (the default run's before issue 15) is the baseline of the ratios, the last
is today's default run's.

Part 2 (``--cores 2``): the first and last configurations' steps per second with the cores spent
two ways: one process with ``--cores`` threads, and ``--cores`` processes with one thread each,
side by side (what Snakemake does with ``threads: 1`` jobs). The throughput ratio says which way
the default run should use a laptop's cores.
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import time
from dataclasses import dataclass

import torch

from benchmarks.ugrl_step import synthetic_batch
from stages.methods.registry import get_method
from stages.models.segmenter import SegmenterSpec
from stages.runtime.distributed import DistContext, autocast, native_bf16
from stages.runtime.hooks import StepContext
from stages.runtime.settings import TrainSettings

WARMUP = 2
CLASSES = 9  # the default toy set's, background included


@dataclass(frozen=True)
class Config:
    decoder: str
    width: int
    precision: str  # fp32 | bf16
    crop: int

    @classmethod
    def parse(cls, text: str) -> "Config":
        decoder, width, precision, crop = text.split(":")
        if precision not in ("fp32", "bf16"):
            raise SystemExit(f"{text}: precision must be fp32 or bf16")
        return cls(decoder, int(width), precision, int(crop))

    def row(self) -> str:
        return f"| {self.decoder} | {self.width} | {self.precision} | {self.crop} |"


class Stepper:
    """One ce model, optimiser and batch: ``step()`` runs and times one training step."""

    def __init__(self, config: Config, batch: int) -> None:
        torch.manual_seed(0)
        bf16 = config.precision == "bf16"
        self.dist = DistContext(0, 1, 0, torch.device("cpu"), bf16=bf16)
        self.method = get_method("ce", {})
        spec = SegmenterSpec("resnet18", config.decoder, CLASSES, decoder_width=config.width)
        self.model = self.method.build_model(spec, None).train()
        self.batch = synthetic_batch(batch, config.crop, CLASSES)
        if self.dist.channels_last:  # what the trainer does in bf16
            self.model.to(memory_format=torch.channels_last)
            self.batch["image"] = self.batch["image"].contiguous(memory_format=torch.channels_last)
        settings = TrainSettings(crop_size=config.crop, batch_size=batch, steps=1000)
        self.optimizations = self.method.configure_optimizers(self.model, settings)
        self.ctx = StepContext(0, settings.steps, self.dist, self.optimizations)

    def step(self) -> float:
        start = time.perf_counter()
        for o in self.optimizations:
            o.optimizer.zero_grad(set_to_none=True)
        with autocast(self.dist):
            loss = self.method.training_step(self.model, self.batch, self.ctx)["loss"]
        loss.backward()
        for o in self.optimizations:
            o.optimizer.step()
        return time.perf_counter() - start


def per_config(configs: list[Config], batch: int, steps: int) -> None:
    steppers = [Stepper(config, batch) for config in configs]
    times: list[list[float]] = [[] for _ in steppers]
    for step in range(steps + WARMUP):
        for stepper, own in zip(steppers, times):
            seconds = stepper.step()
            if step >= WARMUP:
                own.append(seconds)
    base = sorted(times[0])[len(times[0]) // 2]
    print(f"resnet18, batch {batch}, {torch.get_num_threads()} thread(s), {steps} timed steps each "
          f"(CPU with native bf16: {native_bf16(torch.device('cpu'))})")
    print("| decoder | width | precision | crop | s/step (median) | min | max | vs first |")
    print("|---|---|---|---|---|---|---|---|")
    for config, own in zip(configs, times):
        median = sorted(own)[len(own) // 2]
        print(f"{config.row()} {median:.3f} | {min(own):.3f} | {max(own):.3f} | {median / base:.2f} |")


def _worker(config: Config, batch: int, threads: int, seconds: float, start: mp.Event, result: mp.Queue) -> None:
    torch.set_num_threads(threads)
    stepper = Stepper(config, batch)
    for _ in range(WARMUP):
        stepper.step()
    start.wait()
    end, done = time.perf_counter() + seconds, 0
    while time.perf_counter() < end:
        stepper.step()
        done += 1
    result.put(done)


def steps_per_second(config: Config, batch: int, processes: int, threads: int, seconds: float) -> float:
    ctx = mp.get_context("spawn")
    start, result = ctx.Event(), ctx.Queue()
    workers = [ctx.Process(target=_worker, args=(config, batch, threads, seconds, start, result))
               for _ in range(processes)]
    for w in workers:
        w.start()
    time.sleep(15)  # model building and warm-up steps, before the timed window opens
    start.set()
    total = sum(result.get() for _ in workers)
    for w in workers:
        w.join()
    return total / seconds


def two_ways(configs: list[Config], batch: int, cores: int, seconds: float) -> None:
    print(f"\nthe cores spent two ways ({cores} cores, {seconds:.0f} s windows, steps of all processes counted)")
    print(f"| decoder | width | precision | crop | 1 process x {cores} threads (steps/s) "
          f"| {cores} processes x 1 thread (steps/s) | ratio |")
    print("|---|---|---|---|---|---|---|")
    for config in dict.fromkeys([configs[0], configs[-1]]):
        one = steps_per_second(config, batch, 1, cores, seconds)
        many = steps_per_second(config, batch, cores, 1, seconds)
        print(f"{config.row()} {one:.3f} | {many:.3f} | {many / one:.2f} |")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--configs", default="aspp:256:fp32:128,mlp:256:fp32:128,mlp:64:fp32:128,mlp:64:bf16:128,"
                                         "mlp:64:bf16:96",
                   help="comma-separated decoder:width:precision:crop, the first is the baseline")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--steps", type=int, default=8, help="timed steps per decoder in part 1")
    p.add_argument("--threads", type=int, default=1, help="torch threads in part 1")
    p.add_argument("--cores", type=int, default=0, help="part 2 over this many cores (0: skip it)")
    p.add_argument("--seconds", type=float, default=40.0, help="part 2's timed window")
    args = p.parse_args(argv)
    configs = [Config.parse(c) for c in args.configs.split(",")]
    torch.set_num_threads(args.threads)
    per_config(configs, args.batch, args.steps)
    if args.cores > 1:
        two_ways(configs, args.batch, args.cores, args.seconds)


if __name__ == "__main__":
    main()
