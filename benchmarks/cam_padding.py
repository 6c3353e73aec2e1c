"""CAM inference by padding size divisor: time per image and the CAMs' best mIoU, in one process.

    python -m benchmarks.cam_padding --index results/dataset/index.checked.json \
        --checkpoint results/cam/model.pt [--divisors 1 8 16 32] [--split train_aug]
        [--eval-split train] [--repeats 2]

Runs infer_cam's inference (``stages.cams.multiscale.write_cams``: the scales and flip given,
bf16 channels-last where the CPU has it, batches of 8) over ``--split`` for every ``--divisors``
value; 1 is no padding, so only images of one exact size share a forward pass. The CAMs of the
images of ``--eval-split`` (which has masks) go straight into eval_cam's threshold sweep. Prints
ms per image of ``--split`` (the fastest of ``--repeats`` passes, divisors alternating so that
load hits them alike; the sweep's own time included), the ratio against the first divisor, the
number of canvas groups and the best mIoU of the sweep.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from stages.cams.multiscale import canvas_key, write_cams
from stages.cams.threshold import threshold_grid
from stages.data.images import load_rgb
from stages.data.index import DatasetIndex
from stages.data.tensors import to_tensor
from stages.models.cam_net import load_cam_net
from stages.plmix.passes import SweepSink
from stages.runtime.distributed import DistContext, native_bf16


class ScoredOnly:
    """Passes on the CAMs of the scored images to the sweep and drops the others."""

    def __init__(self, sink: SweepSink, scored: set[str]) -> None:
        self.sink, self.scored = sink, scored

    def write(self, image_id: str, cams: np.ndarray, class_indices: Sequence[int]) -> None:
        if image_id in self.scored:
            self.sink.write(image_id, cams, class_indices)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--index", type=Path, required=True, help="a run's results/dataset/index.checked.json")
    p.add_argument("--checkpoint", type=Path, required=True, help="a CAM network file (results/cam/model.pt)")
    p.add_argument("--split", default="train_aug", help="the images inferred (infer_cam's split)")
    p.add_argument("--eval-split", default="train", help="those of them scored: a split with masks")
    p.add_argument("--divisors", type=int, nargs="+", default=[1, 8, 16, 32])
    p.add_argument("--scales", type=float, nargs="+", default=[1.0, 0.5, 1.5])
    p.add_argument("--no-flip", dest="flip", action="store_false")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    index = DatasetIndex.load(args.index)
    ids = index.ids(args.split)
    scored = set(index.ids(args.eval_split))
    device = torch.device("cpu")
    ctx = DistContext(0, 1, 0, device, bf16=native_bf16(device))
    net, _ = load_cam_net(args.checkpoint, device)
    net.eval()
    thresholds = threshold_grid(0.0, 0.6, 0.02)
    shapes = [to_tensor(load_rgb(index.image_path(i))) for i in ids]
    seconds: dict[int, float] = {d: float("inf") for d in args.divisors}
    mious: dict[int, float] = {}
    for _ in range(args.repeats):
        for d in args.divisors:
            sink = SweepSink(index, args.eval_split, thresholds)
            start = time.perf_counter()
            write_cams(net, index, ids, ScoredOnly(sink, scored), args.scales, args.flip, 8, ctx, size_divisor=d)
            seconds[d] = min(seconds[d], time.perf_counter() - start)
            mious[d] = float(np.nanmax([m.miou() for m in sink.matrices]))
    print(f"{len(ids)} images of {args.split} ({len(scored)} of {args.eval_split} scored), scales "
          f"{args.scales}, flip {args.flip}, {args.threads} thread(s), bf16 {ctx.bf16}")
    print("| size divisor | groups | ms/image | vs first | best mIoU |")
    print("|---|---|---|---|---|")
    base = seconds[args.divisors[0]]
    for d in args.divisors:
        groups = len({canvas_key(t, args.scales, d) for t in shapes})
        print(f"| {d} | {groups} | {1000 * seconds[d] / len(ids):.1f} | {seconds[d] / base:.2f} | {mious[d]:.4f} |")


if __name__ == "__main__":
    main()
