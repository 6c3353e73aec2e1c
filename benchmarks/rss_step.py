"""Time of one RSS training step over one ``ce`` step, same model and batch, for N sampled maps.

    python -m benchmarks.rss_step [--samples 1 4 8] [--steps 5] [--batch-size 16] [--crop-size 128]
                                  [--backbone resnet18] [--decoder aspp] [--psr-scales 1.0 0.25 0.125]
                                  [--no-psd] [--level image] [--threads 1] [--device cpu]

Each step is what the loop does: forward, the method's loss (for RSS: sampling, rewards and
advantages at every PSR scale), backward, optimiser step. Random crops and a random 9-class
reference stand in for the data (timing does not depend on what the pixels show); the first
step of each method is a warm-up and is not timed, and the two methods' steps alternate so that
the load of a shared machine hits both alike. Prints one row per N: ms per step and the ratio.
"""
from __future__ import annotations

import argparse
import time

import torch

from stages.methods.ce import CrossEntropy
from stages.methods.rss import RSS
from stages.methods.rss.rewards import make_reward_source
from stages.models.segmenter import Segmenter, SegmenterSpec
from stages.runtime.distributed import DistContext
from stages.runtime.hooks import StepContext
from stages.runtime.settings import TrainSettings

NUM_CLASSES = 9  # the default toy set: background + 8


class Stepper:
    """One method training one model: ``step()`` runs and times one optimiser step."""

    def __init__(self, method, model: torch.nn.Module, batch: dict, ctx: StepContext) -> None:
        self.method, self.model, self.batch, self.ctx = method, model, batch, ctx
        self.optimizer = method.configure_optimizers(model, TrainSettings())[0].optimizer

    def step(self) -> float:
        tic = time.perf_counter()
        self.optimizer.zero_grad(set_to_none=True)
        self.method.training_step(self.model, self.batch, self.ctx)["loss"].backward()
        self.optimizer.step()
        if self.ctx.dist.on_gpu:
            torch.cuda.synchronize()
        return time.perf_counter() - tic


def interleaved_seconds(a: Stepper, b: Stepper, steps: int) -> tuple[float, float]:
    """Mean seconds per step of ``a`` and ``b``, their steps alternating (after one warm-up
    each) so that a change in the machine's load hits both alike."""
    a.step(), b.step()
    times = [(a.step(), b.step()) for _ in range(steps)]
    return sum(t for t, _ in times) / steps, sum(t for _, t in times) / steps


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--samples", type=int, nargs="+", default=[1, 4, 8])
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--crop-size", type=int, default=128)
    p.add_argument("--backbone", default="resnet18")
    p.add_argument("--decoder", default="aspp")
    p.add_argument("--psr-scales", type=float, nargs="+", default=[1.0, 0.25, 0.125])
    p.add_argument("--psd", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--level", choices=["pixel", "image"], default="image")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="cpu")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = torch.device(args.device)
    ctx = StepContext(0, args.steps, DistContext(0, 1, 0, device), [])
    size = args.crop_size
    batch = {"image": torch.randn(args.batch_size, 3, size, size, device=device),
             "label": torch.randint(0, NUM_CLASSES, (args.batch_size, size, size), device=device),
             "tags": torch.rand(args.batch_size, NUM_CLASSES, device=device) < 0.3,
             "id": [f"im{i}" for i in range(args.batch_size)]}
    print(f"{args.backbone}/{args.decoder}, batch {args.batch_size} x {size}px, {args.device}, "
          f"{args.threads} thread(s); RSS {args.level} level, PSR {args.psr_scales}, PSD {args.psd} (N > 1)")
    print("| N | ce ms/step | RSS ms/step | RSS / ce |\n| --- | --- | --- | --- |")
    for n in args.samples:
        torch.manual_seed(0)
        model = Segmenter(SegmenterSpec(args.backbone, args.decoder, NUM_CLASSES)).to(device).train()
        rss = RSS(samples=n, reward={"level": args.level}, psr_scales=args.psr_scales, psd=args.psd and n > 1)
        rss.source = make_reward_source(rss.spec, NUM_CLASSES)
        ce, t = interleaved_seconds(Stepper(CrossEntropy(), model, batch, ctx), Stepper(rss, model, batch, ctx),
                                    args.steps)
        print(f"| {n} | {ce * 1000:.0f} | {t * 1000:.0f} | {t / ce:.2f} |")

if __name__ == "__main__":
    main()
