"""UGRL's training step time over ce's, at the same backbone, decoder, crop and batch.

    python -m benchmarks.ugrl_step [--backbone resnet18] [--decoder mlp] [--crop 128] [--batch 16]
                                   [--steps 10] [--targets cached|online] [--threads 2]

Each step is what the loop does with a method's hooks: ``training_step`` (forward and losses),
backward, the optimiser step from ``configure_optimizers``, then ``after_step`` (UGRL's prototype
EMA). Both methods see the same synthetic batch (random images; blocky label maps with an
ignored band, as pseudo labels have), UGRL past its warm-up so every loss runs. Steps of the two
methods alternate, so a change of machine load hits both alike; the first two of each are not timed.
"""
from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from stages.io.label_png import IGNORE
from stages.methods.registry import get_method
from stages.models.segmenter import SegmenterSpec
from stages.runtime.distributed import DistContext
from stages.runtime.hooks import StepContext
from stages.runtime.settings import TrainSettings

WARMUP = 2


def synthetic_batch(batch: int, crop: int, num_classes: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    coarse = torch.randint(0, num_classes, (batch, 1, 4, 4), generator=g).float()
    label = F.interpolate(coarse, size=(crop, crop), mode="nearest")[:, 0].long()
    label[:, crop // 2 - 2:crop // 2 + 2] = IGNORE
    present = torch.zeros(batch, num_classes - 1)
    for b in range(batch):
        classes = label[b].unique()
        present[b, classes[(classes > 0) & (classes != IGNORE)] - 1] = 1.0
    return {"image": torch.randn(batch, 3, crop, crop, generator=g), "label": label, "labels": present,
            "gt": label.clone()}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--backbone", default="resnet18")
    p.add_argument("--decoder", default="mlp")
    p.add_argument("--crop", type=int, default=128)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--classes", type=int, default=9, help="including background (the default toy set's)")
    p.add_argument("--steps", type=int, default=10, help="timed steps per method")
    p.add_argument("--targets", choices=("cached", "online"), default="cached")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = torch.device("cpu")
    ctx = DistContext(0, 1, 0, device)
    settings = TrainSettings(crop_size=args.crop, batch_size=args.batch, steps=args.steps + WARMUP)
    batch = synthetic_batch(args.batch, args.crop, args.classes)
    spec = SegmenterSpec(args.backbone, args.decoder, args.classes)
    runs = {}
    for name, options in (("ce", {}), ("ugrl", {"targets": args.targets})):
        method = get_method(name, options)
        model = method.build_model(spec, None).to(device).train()
        optimizations = method.configure_optimizers(model, settings)
        runs[name] = (method, model, optimizations, StepContext(0, settings.steps, ctx, optimizations), [])
    for step in range(settings.steps):
        for name, (method, model, optimizations, sctx, times) in runs.items():
            sctx.step = step
            start = time.perf_counter()
            for o in optimizations:
                o.optimizer.zero_grad(set_to_none=True)
            method.training_step(model, batch, sctx)["loss"].backward()
            for o in optimizations:
                o.optimizer.step()
            method.after_step(model, sctx)
            if step >= WARMUP:
                times.append(time.perf_counter() - start)
    mean = {name: sum(run[4]) / len(run[4]) for name, run in runs.items()}
    print(f"{args.backbone}/{args.decoder}, crop {args.crop}, batch {args.batch}, {args.threads} thread(s), "
          f"{args.steps} timed steps, ugrl targets {args.targets}")
    for name, seconds in mean.items():
        print(f"  {name:5s} {seconds * 1000:8.1f} ms/step")
    print(f"  ugrl / ce = {mean['ugrl'] / mean['ce']:.2f}x")


if __name__ == "__main__":
    main()
