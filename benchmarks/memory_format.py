"""Channels-last against the default layout in fp32 on a CPU, for the two backbones the configs use.

    python -m benchmarks.memory_format [--rounds 4] [--threads 1]

For resnet18 (the default run's segmenter: batch 16, 96 px crops) and EfficientNet-Lite0 (the
real-image configs': batch 8, 224 px crops), each with the MLP decoder: one training step
(forward, cross-entropy, backward, SGD) on a synthetic batch, and one inference pass on a
500 x 375 image (a VOC image), in both layouts. The layouts' runs alternate so that a change of
load hits both alike; the first of each is not timed. Prints seconds and the ratio
channels-last / default: below 1, the config's ``channels_last: true`` pays for that backbone.
"""
from __future__ import annotations

import argparse
import time
from typing import Callable

import torch
import torch.nn.functional as F

from stages.models.segmenter import Segmenter, SegmenterSpec

CASES = (("resnet18", 16, 96), ("efficientnet_lite0", 8, 224))


def workloads(backbone: str, batch: int, crop: int, channels_last: bool) -> dict[str, Callable[[], None]]:
    """The training step and the inference pass of one backbone in one layout."""
    torch.manual_seed(0)
    model = Segmenter(SegmenterSpec(backbone, "mlp", 21))
    images, image = torch.randn(batch, 3, crop, crop), torch.randn(1, 3, 375, 500)
    labels = torch.randint(0, 21, (batch, crop, crop))
    if channels_last:
        model.to(memory_format=torch.channels_last)
        images, image = (x.contiguous(memory_format=torch.channels_last) for x in (images, image))
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)

    def train_step() -> None:
        model.train()
        loss = F.cross_entropy(model(images), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    @torch.inference_mode()
    def inference() -> None:
        model.eval()
        model(image)

    return {"training step": train_step, "inference 500x375": inference}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f"fp32, {args.threads} thread(s), {args.rounds} timed runs each")
    for backbone, batch, crop in CASES:
        runs = {layout: workloads(backbone, batch, crop, layout) for layout in (False, True)}
        seconds = {(layout, name): 0.0 for layout in runs for name in runs[layout]}
        for timed in [False] + [True] * args.rounds:
            for layout, named in runs.items():
                for name, work in named.items():
                    start = time.perf_counter()
                    work()
                    seconds[layout, name] += (time.perf_counter() - start) * timed
        for name in runs[False]:
            plain, last = (seconds[layout, name] / args.rounds for layout in (False, True))
            print(f"  {backbone:18s} {name:18s} default {plain:.3f} s   channels-last {last:.3f} s   "
                  f"ratio {last / plain:.2f}")


if __name__ == "__main__":
    main()
