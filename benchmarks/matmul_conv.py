"""bf16 convolutions on small CPU maps: oneDNN's convolution against ``MatmulConv2d``'s matrix product.

    python -m benchmarks.matmul_conv [--limits 0,16,36,64] [--steps 8] [--threads 1]

Part 1: one 512 -> 512 3x3 convolution (resnet18's last stage), 16 images, bf16 autocast with
channels-last tensors as the trainer runs it, at several map sizes: forward, and forward plus
backward, ``F.conv2d`` against ``conv2d_as_matmul``, calls alternating.

Part 2: training steps of the default run's two networks, the segmenter (``ce``, resnet18 + MLP
64, 96 px crops) and the CAM network (128 px crops, multi-label loss), one model per value of
``matmul_conv.MAX_PIXELS`` (0 = oneDNN everywhere, the baseline) from the same initial weights,
their steps alternating; then the CAM network's inference passes (bf16 weights, 8 images a pass)
at three image sizes. The ratios say where the matrix product pays, which sets ``MAX_PIXELS``.
"""
from __future__ import annotations

import argparse
import time
from typing import Callable

import torch
import torch.nn.functional as F

from benchmarks.seg_step import Config, Stepper
from stages.models import matmul_conv
from stages.models.cam_net import CAMNet
from stages.runtime.distributed import DistContext, autocast, inference_copy

WARMUP = 2
BATCH = 16


def _median(values: list[float]) -> float:
    return sorted(values)[len(values) // 2]


def _alternate(calls: list[Callable[[], float]], steps: int) -> list[float]:
    """Each call's median seconds over ``steps`` rounds, the calls taking turns."""
    times: list[list[float]] = [[] for _ in calls]
    for step in range(steps + WARMUP):
        for call, own in zip(calls, times):
            seconds = call()
            if step >= WARMUP:
                own.append(seconds)
    return [_median(t) for t in times]


def _timed(fn: Callable[[], object]) -> Callable[[], float]:
    def call() -> float:
        start = time.perf_counter()
        fn()
        return time.perf_counter() - start
    return call


def one_conv(steps: int) -> None:
    print(f"part 1: one 512 -> 512 3x3 convolution, {BATCH} images, bf16 autocast, channels-last (ms, median)")
    print("| map | conv forward | matmul forward | conv fwd+bwd | matmul fwd+bwd | fwd+bwd ratio |")
    print("|---|---|---|---|---|---|")
    weight = (torch.randn(512, 512, 3, 3) * 0.01).contiguous(memory_format=torch.channels_last).requires_grad_()
    for side in (3, 4, 6, 8, 12):
        x = torch.randn(BATCH, 512, side, side).contiguous(memory_format=torch.channels_last).requires_grad_()

        def conv() -> torch.Tensor:
            with torch.autocast("cpu", dtype=torch.bfloat16):
                return F.conv2d(x, weight, None, 1, 1)

        def matmul() -> torch.Tensor:
            return matmul_conv.conv2d_as_matmul(x.to(torch.bfloat16), weight, None, (1, 1), (1, 1), (1, 1))

        def backward(forward: Callable[[], torch.Tensor]) -> Callable[[], None]:
            return lambda: forward().sum().backward()

        ms = [1000 * t for t in _alternate([_timed(conv), _timed(matmul), _timed(backward(conv)),
                                            _timed(backward(matmul))], steps)]
        print(f"| {side}x{side} | {ms[0]:.2f} | {ms[1]:.2f} | {ms[2]:.2f} | {ms[3]:.2f} | {ms[3] / ms[2]:.2f} |")


class CamStepper:
    """One CAM network step (forward, multi-label loss, backward, SGD) on a fixed random batch."""

    def __init__(self, crop: int, bf16: bool = True) -> None:
        torch.manual_seed(0)
        self.dist = DistContext(0, 1, 0, torch.device("cpu"), bf16=bf16)
        self.model = CAMNet("resnet18", 8).train().to(memory_format=torch.channels_last)
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
        self.images = torch.randn(BATCH, 3, crop, crop).contiguous(memory_format=torch.channels_last)
        self.targets = (torch.rand(BATCH, 8) > 0.7).float()

    def step(self) -> float:
        start = time.perf_counter()
        self.optimizer.zero_grad(set_to_none=True)
        with autocast(self.dist):
            loss = F.multilabel_soft_margin_loss(self.model(self.images), self.targets)
        loss.backward()
        self.optimizer.step()
        return time.perf_counter() - start


def _at_limit(limit: int, call: Callable[[], float]) -> Callable[[], float]:
    def run() -> float:
        matmul_conv.ON_AMX_CPU = True  # measured on any CPU; the stages take the product only on AMX
        matmul_conv.MAX_PIXELS = limit
        return call()
    return run


def steps_by_limit(limits: list[int], steps: int) -> None:
    print(f"\npart 2: training steps and inference passes by MAX_PIXELS ({limits[0]} = the baseline), "
          f"{torch.get_num_threads()} thread(s), s (median) and ratio; this CPU has AMX: {matmul_conv.ON_AMX_CPU}")
    print("| work | " + " | ".join(f"MAX_PIXELS {limit}" for limit in limits) + " |")
    print("|---|" + "---|" * len(limits))
    rows: dict[str, list[Callable[[], float]]] = {
        "segmenter step (ce, mlp 64, crop 96)": [
            _at_limit(limit, Stepper(Config("mlp", 64, "bf16", 96), BATCH).step) for limit in limits],
        "CAM network step (crop 128)": [_at_limit(limit, CamStepper(128).step) for limit in limits],
    }
    dist = DistContext(0, 1, 0, torch.device("cpu"), bf16=True)
    net = inference_copy(CAMNet("resnet18", 8).eval(), dist)
    for size in (96, 128, 192):
        images = torch.randn(8, 3, size, size, dtype=torch.bfloat16).contiguous(memory_format=torch.channels_last)

        def cams(images: torch.Tensor = images) -> None:
            with torch.no_grad(), autocast(dist):
                net.cams(images)
        rows[f"CAM pass, 8 images of {size} px"] = [_at_limit(limit, _timed(cams)) for limit in limits]
    for name, calls in rows.items():
        seconds = _alternate(calls, steps)
        print(f"| {name} | " + " | ".join(f"{s:.4f} ({s / seconds[0]:.2f})" for s in seconds) + " |")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--limits", default="0,16,36,64", help="MAX_PIXELS values to compare, the first is the baseline")
    p.add_argument("--steps", type=int, default=8, help="timed rounds per measurement")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    one_conv(args.steps)
    steps_by_limit([int(v) for v in args.limits.split(",")], args.steps)


if __name__ == "__main__":
    main()
