"""How well each estimate of EIL's reward ranks proposals by their true gain in label precision.

    python -m benchmarks.eil_reward --results RESULTS [--variant eil_none] [--labels DIR]
        [--images 60] [--actions 6] [--radius 0.08] [--steps 1 3 10] [--long 30] [--lr 0.01]

On a trained segmenter of a run (``RESULTS/seg/<variant>/model.pt``, standing in for the round's
teacher) and the label maps it trained on (default: the synthetic scribbles), each of ``--images``
`train` images with a mask gets ``--actions`` random threshold actions (action space ``two``,
``--radius`` of the longer side, classes restricted to the map's): proposals M' = H(M, a). Every
proposal is scored by the reward estimates of ``stages.methods.eil.reward``: ``round`` (the
round's features for both maps) and ``updated`` after each of ``--steps`` decoder steps; and by
``--long`` steps, the nearest to the paper's F' (features after training on M') one proposal at a
time affords. Ground truth gives each proposal's true change in precision (reporting only).

Prints per estimate: Spearman with the precision change over all proposals and within images
(mean over images), Spearman with the ``--long`` reward, the reward's mean and share above 0, and
seconds per proposal.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from scipy.stats import spearmanr

from stages.data.images import load_rgb
from stages.data.index import DatasetIndex
from stages.io.label_png import label_path, read_label
from stages.methods.eil.diagnostics import precision
from stages.methods.eil.explore import teacher_views
from stages.methods.eil.inference import class_thresholds, infer_labels, radius_in_pixels
from stages.methods.eil.report import REPORT_SPLIT, report_ids
from stages.methods.eil.reward import Rewarder, RewardSettings
from stages.methods.registry import load_trained_model
from stages.runtime.distributed import DistContext


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    keep = np.isfinite(a) & np.isfinite(b)
    if keep.sum() < 3 or np.ptp(a[keep]) == 0 or np.ptp(b[keep]) == 0:
        return float("nan")
    return float(spearmanr(a[keep], b[keep])[0])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--results", type=Path, required=True, help="a run's results/ folder")
    p.add_argument("--variant", default="eil_none")
    p.add_argument("--labels", type=Path, help="label maps M (default RESULTS/scribbles/synthetic/train_aug)")
    p.add_argument("--images", type=int, default=60)
    p.add_argument("--actions", type=int, default=6)
    p.add_argument("--radius", type=float, default=0.08, help="fraction of the image's longer side")
    p.add_argument("--steps", type=int, nargs="+", default=[1, 3, 10])
    p.add_argument("--long", type=int, default=30)
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument("--delta", type=float, default=10.0)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    cpu = torch.device("cpu")
    ctx = DistContext(0, 1, 0, cpu, False)
    index = DatasetIndex.load(args.results / "dataset" / "index.checked.json")
    labels = args.labels or args.results / "scribbles" / "synthetic" / "train_aug"
    model, _ = load_trained_model(args.results / "seg" / args.variant / "model.pt", cpu)
    num_classes = model.decoder.classifier.out_channels
    estimates = {"round": RewardSettings("round", delta=args.delta)}
    for steps in [*args.steps, args.long]:
        estimates[f"updated {steps}"] = RewardSettings("updated", steps, args.lr, args.delta)
    rewarders = {name: Rewarder(model.decoder, num_classes, s) for name, s in estimates.items()}
    generator = torch.Generator().manual_seed(0)
    rewards: dict[str, list[float]] = {name: [] for name in estimates}
    seconds = dict.fromkeys(estimates, 0.0)
    gains, image_of = [], []
    ids = report_ids(index, index.ids("train_aug"))[:args.images]
    for k, image_id in enumerate(ids):
        view = teacher_views(model, [load_rgb(index.image_path(image_id))], ctx, keep_pyramid=True)[0]
        m = read_label(label_path(labels, image_id))
        gt = read_label(index.mask_path(image_id, REPORT_SPLIT))
        radius = radius_in_pixels(args.radius, "fraction", m.shape)
        for action in torch.rand(args.actions, 2, generator=generator).numpy():
            new = infer_labels(m, view.probs, class_thresholds(action, "two", num_classes), radius)
            gains.append(precision(new, gt) - precision(m, gt))
            image_of.append(k)
            for name, rewarder in rewarders.items():
                start = time.perf_counter()
                rewards[name].append(rewarder(view.features, view.pyramid, m, new))
                seconds[name] += time.perf_counter() - start
    gain, image_of = np.array(gains), np.array(image_of)
    long = np.array(rewards[f"updated {args.long}"])
    print(f"{len(ids)} images x {args.actions} random actions, radius {args.radius:g} of the longer side, "
          f"decoder lr {args.lr:g}; {args.variant}'s segmenter, labels {labels}")
    print(f"{'estimate':<12} {'vs gain':>8} {'within img':>10} {'vs long':>8} {'mean':>8} {'> 0':>6} {'s/prop':>7}")
    for name, values in rewards.items():
        r = np.array(values)
        within = [_spearman(r[image_of == k], gain[image_of == k]) for k in range(len(ids))]
        print(f"{name:<12} {_spearman(r, gain):8.3f} {np.nanmean(within):10.3f} {_spearman(r, long):8.3f} "
              f"{r.mean():8.4f} {(r > 0).mean():6.2f} {seconds[name] / len(r):7.3f}")


if __name__ == "__main__":
    main()
