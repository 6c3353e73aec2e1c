"""PL-Mix's soft IoU and Dice losses: one-hot products, each loss on its own (the code before)
against ``soft_iou_and_dice_losses`` (sums scattered by class id, shared by the two), in one process.

    python -m benchmarks.plmix_losses [--batch 16] [--classes 9] [--crop 128] [--repeats 20] [--threads 1]

A PL-Mix step's shapes in the default run: the class maps of a batch upsampled to the crop, a
softmax over background and the classes, and a pseudo-label target with an ignored band. Each
way runs forward and backward from the class maps; the two alternate so that load hits them
alike. Prints ms per step (median) and the ratio, and the largest difference of losses and
gradients between the ways.
"""
from __future__ import annotations

import argparse
import statistics
import time
from typing import Callable

import torch
import torch.nn.functional as F

from stages.io.label_png import IGNORE
from stages.plmix.losses import soft_iou_and_dice_losses


def one_hot_losses(probs: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The two losses as the code computed them before: a one-hot target, and the sums made
    twice, once per loss."""
    def overlaps() -> tuple[torch.Tensor, ...]:
        valid = (target != IGNORE).unsqueeze(1)
        one_hot = F.one_hot(target.masked_fill(~valid[:, 0], 0).long(), probs.shape[1])
        y = one_hot.permute(0, 3, 1, 2).to(probs.dtype) * valid
        p = probs * valid
        inter, y_sum = (p * y).sum(dim=(2, 3)), y.sum(dim=(2, 3))
        return inter, p.sum(dim=(2, 3)), y_sum, y_sum > 0

    inter, p_sum, y_sum, scored = overlaps()
    iou = (1 - inter / (p_sum + y_sum - inter).clamp_min(1e-5))[scored].mean()
    inter, p_sum, y_sum, scored = overlaps()
    dice = (1 - 2 * inter / (p_sum + y_sum).clamp_min(1e-5))[scored].mean()
    return iou, dice


def step(losses: Callable, maps: torch.Tensor, target: torch.Tensor) -> tuple[list[float], torch.Tensor]:
    maps = maps.clone().requires_grad_(True)
    probs = F.interpolate(maps, size=target.shape[-2:], mode="bilinear", align_corners=False).softmax(dim=1)
    iou, dice = losses(probs, target)
    (iou + dice).backward()
    return [iou.item(), dice.item()], maps.grad


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--classes", type=int, default=9, help="including background (the default toy set's)")
    p.add_argument("--crop", type=int, default=128)
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(0)
    maps = torch.randn(args.batch, args.classes, args.crop // 16, args.crop // 16, generator=g)
    target = torch.randint(0, args.classes, (args.batch, args.crop, args.crop), generator=g)
    target[:, args.crop // 2 - 2:args.crop // 2 + 2] = IGNORE
    ways = {"one-hot, per loss": one_hot_losses, "scattered, shared": soft_iou_and_dice_losses}
    times: dict[str, list[float]] = {name: [] for name in ways}
    results = {}
    for _ in range(args.repeats + 2):
        for name, losses in ways.items():
            start = time.perf_counter()
            results[name] = step(losses, maps, target)
            times[name].append(time.perf_counter() - start)
    median = {name: statistics.median(t[2:]) for name, t in times.items()}
    (base_values, base_grad), (values, grad) = results.values()
    print(f"batch {args.batch}, {args.classes} classes, {args.crop} px, {args.threads} thread(s), "
          f"median of {args.repeats}, forward and backward")
    print("| way | ms | vs one-hot |\n|---|---|---|")
    for name in ways:
        print(f"| {name} | {1000 * median[name]:.1f} | {median[name] / median['one-hot, per loss']:.2f} |")
    print(f"largest difference: losses {max(abs(a - b) for a, b in zip(values, base_values)):.2e}, "
          f"gradient {(grad - base_grad).abs().max().item():.2e}")


if __name__ == "__main__":
    main()
