"""The EIL teacher's passes of one exploration round: one image per pass against ``teacher_views``'
batches, in one process.

    python -m benchmarks.teacher_views [--images 400] [--transitions 160] [--repeats 3] [--threads 1]

The default toy set's training images (96 to 160 px, generated here) through the default run's
segmenter (resnet18 + MLP decoder 64 wide, random weights: the time does not depend on them), run
as ``inference_copy`` makes it. A round's passes are ``--transitions`` random images explored for
the policy's replay buffer and one pass over every image for labelling. Three ways, alternating so that load
hits them alike: every image alone (the teacher before batching); the round as ``Explorer`` runs
it (the explored images in passes of 8, each padded to its common canvas; labelling in passes of images
of one canvas); and the labelling alone, one image per pass against canvas groups. Prints seconds
per round (median of ``--repeats``) and the ratio against one image per pass.
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from stages.data.images import load_rgb
from stages.data.toy import generate_toy
from stages.methods.eil.agent import PolicyAgent
from stages.methods.eil.explore import PASS_BATCH, Explorer, RoundSettings, teacher_views
from stages.methods.eil.reward import Rewarder, RewardSettings
from stages.models.segmenter import Segmenter, SegmenterSpec
from stages.runtime.distributed import DistContext, native_bf16


def timed(passes: Callable[[], None]) -> float:
    start = time.perf_counter()
    passes()
    return time.perf_counter() - start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=400)
    p.add_argument("--transitions", type=int, default=160, help="images explored per round (eil's transitions)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    cpu = torch.device("cpu")
    ctx = DistContext(0, 1, 0, cpu, native_bf16(cpu))
    with tempfile.TemporaryDirectory() as tmp:
        index = generate_toy(Path(tmp), num_classes=8, num_train_aug=args.images, num_train=1, num_val=1,
                             min_size=96, max_size=160, seed=0)
        images = [load_rgb(index.image_path(i)) for i in index.ids("train_aug")]
    torch.manual_seed(0)
    teacher = Segmenter(SegmenterSpec("resnet18", "mlp", 9, decoder_width=64)).eval()
    settings = RoundSettings("searcher_assessor", "two", 21.0, "px", 0.1, 0.0, args.transitions, 200, 32, 16, True)
    agent = PolicyAgent(64 + 2 * 9 + 1, 2, 32, 2, 1e-3, 0.9, 0.05)
    rewarder = Rewarder(teacher.decoder, 9, RewardSettings())
    explorer = Explorer(teacher, agent, settings, rewarder, 9, 2, torch.Generator().manual_seed(0), ctx)
    copy, ids = explorer.teacher, [str(i) for i in range(len(images))]
    picks = np.random.default_rng(0).integers(len(images), size=args.transitions).reshape(-1, PASS_BATCH)

    def singles(chosen: list[np.ndarray]) -> None:
        for image in chosen:
            teacher_views(copy, [image], ctx)

    def labelling_by_canvas() -> None:
        for _ in explorer.views_by_canvas(ids, lambda i: images[int(i)]):
            pass

    def round_batched() -> None:
        for update in picks:
            teacher_views(copy, [images[i] for i in update], ctx)
        labelling_by_canvas()

    learn_images = [images[i] for i in picks.ravel()]
    ways = {"one image per pass": lambda: singles(learn_images + images), "batched (Explorer)": round_batched,
            "labelling, one per pass": lambda: singles(images), "labelling by canvas": labelling_by_canvas}
    times: dict[str, list[float]] = {name: [] for name in ways}
    for _ in range(args.repeats):
        for name, way in ways.items():
            times[name].append(timed(way))
    median = {name: statistics.median(t) for name, t in times.items()}
    print(f"resnet18 + mlp 64 ({'bf16' if ctx.bf16 else 'fp32'} inference copy), {args.threads} thread(s), "
          f"{args.images} toy images, {args.transitions} explored; median of {args.repeats}")
    print("| passes | s per round | vs one per pass |\n|---|---|---|")
    for name, base in [("one image per pass", "one image per pass"), ("batched (Explorer)", "one image per pass"),
                       ("labelling, one per pass", "labelling, one per pass"),
                       ("labelling by canvas", "labelling, one per pass")]:
        print(f"| {name} | {median[name]:.2f} | {median[name] / median[base]:.2f} |")


if __name__ == "__main__":
    main()
