"""The training flags every trainer takes (the schema's `train` block), parsed in one place."""
from __future__ import annotations

import argparse
from typing import Any

from stages.data.transforms import AugmentConfig
from stages.runtime.trainer import LoopConfig


def add_training_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of workflow/schemas/config.schema.yaml `$defs/train`; required, the schema has the defaults."""
    g = parser.add_argument_group("training")
    g.add_argument("--crop-size", type=int, required=True)
    g.add_argument("--scale-range", type=float, nargs=2, required=True, metavar=("MIN", "MAX"))
    g.add_argument("--color-jitter", type=float, required=True)
    g.add_argument("--batch-size", type=int, required=True, help="per process")
    g.add_argument("--steps", type=int, required=True)
    g.add_argument("--optimizer", choices=("sgd", "adamw"), required=True)
    g.add_argument("--lr", type=float, required=True)
    g.add_argument("--head-lr-mult", type=float, required=True, help="lr factor of the new layers")
    g.add_argument("--weight-decay", type=float, required=True)
    g.add_argument("--checkpoint-every", type=int, required=True)
    g.add_argument("--seed", type=int, required=True)
    g.add_argument("--num-workers", type=int, required=True)
    g.add_argument("--on-nonfinite", choices=("stop", "skip"), required=True)
    g.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")


def augment_config(args: argparse.Namespace) -> AugmentConfig:
    return AugmentConfig(crop_size=args.crop_size, scale_range=tuple(args.scale_range),
                         color_jitter=args.color_jitter)


def loop_config(args: argparse.Namespace) -> LoopConfig:
    return LoopConfig(steps=args.steps, batch_size=args.batch_size, checkpoint_every=args.checkpoint_every,
                      seed=args.seed, num_workers=args.num_workers, on_nonfinite=args.on_nonfinite)


def training_meta(args: argparse.Namespace, world_size: int) -> dict[str, Any]:
    """Everything that shapes the result; a checkpoint whose meta differs is not resumed."""
    return {"crop_size": args.crop_size, "scale_range": list(args.scale_range),
            "color_jitter": args.color_jitter, "batch_size": args.batch_size, "steps": args.steps,
            "optimizer": args.optimizer, "lr": args.lr, "head_lr_mult": args.head_lr_mult,
            "weight_decay": args.weight_decay, "seed": args.seed, "world_size": world_size}
