"""Inference passes of a network as trained (autocast) against its ``inference_copy``, in one process.

    python -m benchmarks.inference_copy [--backbone resnet18] [--decoder mlp] [--width 64]
        [--sizes 96 128 160] [--batches 1 8] [--passes 40] [--threads 1]

A segmenter as train_seg builds it (random weights: the time does not depend on them), fed
toy-sized images (height and width drawn from ``--sizes``) one batch at a time, as the EIL teacher
(batches of 1), evaluation (1 image x scales) and CAM inference (batches of 8) feed theirs. Per
batch size, three ways, alternating so that load hits them alike: fp32; bf16 autocast on the
network as trained (fp32 weights that require grad, in channels-last: what the stages ran before
``inference_copy``); and autocast on ``inference_copy`` (bf16 weights cast once). Prints ms per
image (median of ``--repeats`` rounds of ``--passes`` passes) and the ratio against autocast.
Needs a CPU or GPU that computes bf16 natively to say anything about bf16.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from stages.models.segmenter import Segmenter, SegmenterSpec
from stages.runtime.distributed import DistContext, autocast, inference_copy, native_bf16


def time_passes(model: torch.nn.Module, images: list[torch.Tensor], ctx: DistContext) -> float:
    """Seconds per image over ``images`` (each a batch), in inference mode under ``autocast(ctx)``."""
    start = time.perf_counter()
    with torch.inference_mode():
        for x in images:
            with autocast(ctx):
                model(x)
    return (time.perf_counter() - start) / sum(len(x) for x in images)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--backbone", default="resnet18")
    p.add_argument("--decoder", default="mlp")
    p.add_argument("--width", type=int, default=64)
    p.add_argument("--classes", type=int, default=4)
    p.add_argument("--sizes", type=int, nargs="+", default=[96, 128, 160])
    p.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    p.add_argument("--passes", type=int, default=40)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    cpu = torch.device("cpu")
    if not native_bf16(cpu):
        print("note: this CPU has no native bf16 (AMX); the bf16 rows emulate it")
    fp32, bf16 = DistContext(0, 1, 0, cpu, False), DistContext(0, 1, 0, cpu, True)
    torch.manual_seed(0)
    model = Segmenter(SegmenterSpec(args.backbone, args.decoder, args.classes, decoder_width=args.width)).eval()
    channels_last = Segmenter(model.spec).eval()
    channels_last.load_state_dict(model.state_dict())
    channels_last.to(memory_format=torch.channels_last)
    copy = inference_copy(model, bf16)
    ways = {"fp32": (model, fp32, False), "autocast": (channels_last, bf16, True),
            "inference_copy": (copy, bf16, True)}
    print(f"{args.backbone} + {args.decoder} {args.width}, {args.threads} thread(s), images of "
          f"{args.sizes} px, {args.passes} passes x {args.repeats}")
    print("| batch | way | ms/img (median) | vs autocast |\n|---|---|---|---|")
    for batch in args.batches:
        gen = torch.Generator().manual_seed(batch)
        sizes = [(args.sizes[int(torch.randint(len(args.sizes), (), generator=gen))],
                  args.sizes[int(torch.randint(len(args.sizes), (), generator=gen))]) for _ in range(args.passes)]
        images = [torch.randn(batch, 3, h, w, generator=gen) for h, w in sizes]
        layouts = {False: images, True: [x.contiguous(memory_format=torch.channels_last) for x in images]}
        times: dict[str, list[float]] = {name: [] for name in ways}
        for _ in range(args.repeats):
            for name, (net, ctx, cl) in ways.items():
                times[name].append(time_passes(net, layouts[cl], ctx))
        median = {name: statistics.median(t) for name, t in times.items()}
        for name in ways:
            print(f"| {batch} | {name} | {1000 * median[name]:.1f} | {median[name] / median['autocast']:.2f} |")


if __name__ == "__main__":
    main()
