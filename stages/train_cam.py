"""Train the CAM network: a multi-label image classifier whose class maps become the CAMs.

Runs on CPU, one GPU, or several through ``torchrun`` (DDP; gloo on CPU). Resumes from
``--checkpoint`` when it exists; ``--out`` is written only once training finished with finite
weights, so its presence means a complete model.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from stages.data.classification import ClassificationDataset
from stages.data.index import DatasetIndex
from stages.data.transforms import AugmentConfig
from stages.errors import run_stage
from stages.io.checkpoint import save_model
from stages.models.cam_net import POOLINGS, CAMNet
from stages.models.weight_names import NAMED_WEIGHTS
from stages.runtime.distributed import distributed_session
from stages.runtime.hooks import StepContext, TrainHooks
from stages.runtime.settings import TrainSettings, add_training_arguments, settings_from
from stages.runtime.trainer import NonFiniteLossError, train_loop


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--index", type=Path, required=True, help="data set index JSON (prepare stage)")
    p.add_argument("--split", required=True, help="split to train on, e.g. train_aug")
    p.add_argument("--out", type=Path, required=True, help="final model file, written at the end")
    p.add_argument("--checkpoint", type=Path, required=True, help="resumable training state")
    p.add_argument("--metrics", type=Path, required=True, help="per-step metrics CSV")
    p.add_argument("--backbone", required=True, help="timm model name, e.g. resnet18")
    p.add_argument("--weights", required=True, help=f"{', '.join(NAMED_WEIGHTS)}, or a .pth/.safetensors")
    p.add_argument("--pooling", choices=POOLINGS, required=True)
    add_training_arguments(p)
    return p.parse_args(argv)


class Classification(TrainHooks):
    """Multi-label soft-margin loss, computed in float32 even under bf16 autocast."""

    def training_step(self, net: torch.nn.Module, batch: dict[str, torch.Tensor],
                      ctx: StepContext) -> dict[str, torch.Tensor]:
        logits = net(batch["image"])
        return {"loss": F.multilabel_soft_margin_loss(logits.float(), batch["labels"])}


def run_meta(args: argparse.Namespace, settings: TrainSettings, index: DatasetIndex,
             world_size: int) -> dict[str, Any]:
    """What the model is (read by load_cam_net) plus everything that shapes the training result.

    The trainer does not resume a checkpoint whose meta differs, so a changed backbone, data
    set, split or hyperparameter starts a fresh run instead of silently continuing an old one.
    """
    return {
        "backbone": args.backbone, "weights": args.weights, "pooling": args.pooling,
        "num_classes": index.num_classes - 1, "classes": list(index.classes), "dataset": index.name,
        "train": {"split": args.split, **settings.meta(world_size)},
        "split_sha256": index.fingerprint(args.split),
    }


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    settings = settings_from(args)
    index = DatasetIndex.load(args.index)
    dataset = ClassificationDataset(index, args.split, AugmentConfig.from_settings(settings), settings.seed)
    with distributed_session(args.device, args.precision, args.channels_last) as ctx:
        meta = run_meta(args, settings, index, ctx.world_size)
        torch.manual_seed(settings.seed)
        model = CAMNet(args.backbone, meta["num_classes"], weights=args.weights, pooling=args.pooling)
        try:
            train_loop(model, Classification(), dataset, settings, ctx, args.checkpoint, args.metrics, meta,
                       image_classes=index.image_classes(args.split))
        except NonFiniteLossError as exc:
            sys.exit(f"train_cam: {exc}; no model written to {args.out}")
        if ctx.is_main:
            save_model(args.out, model, meta)


if __name__ == "__main__":
    run_stage(main)
