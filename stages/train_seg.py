"""Train a segmenter with a registered method (``ce``, ...) on the shared cache.

Reads top to bottom: arguments -> method and its inputs -> model (optionally starting from the
CAM network's backbone) -> data -> optimiser -> the shared resumable loop -> final model file.
Started by ``torchrun`` it trains with DDP; a plain ``python -m`` runs one process.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from torch import nn

from stages.data.index import DatasetIndex
from stages.io.checkpoint import file_sha256, save_checkpoint
from stages.methods.base import TrainInputs
from stages.methods.registry import METHODS, get_method, missing_inputs
from stages.models.segmenter import DECODERS, SegmenterSpec, init_backbone_from_cam
from stages.runtime.distributed import DistContext, distributed_session
from stages.runtime.optim import build_optimizer, poly_schedule
from stages.runtime.train_args import add_training_arguments, augment_config, loop_config, training_meta
from stages.runtime.trainer import train_loop

NEED_FLAGS = {"pseudo_labels": "--pseudo-labels DIR", "cam_checkpoint": "--init-from-cam model.pt",
              "scribbles": "an index with scribbles"}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--index", type=Path, required=True, help="prepared data set index (JSON)")
    p.add_argument("--split", required=True, help="split to train on, e.g. train_aug")
    p.add_argument("--method", required=True, choices=sorted(METHODS))
    p.add_argument("--method-options", default="{}", help="JSON object of the method's options")
    p.add_argument("--pseudo-labels", type=Path, help="folder of <id>.png pseudo labels for the split")
    p.add_argument("--init-from-cam", type=Path, help="CAM model file whose backbone starts the segmenter")
    p.add_argument("--backbone", required=True)
    p.add_argument("--weights", required=True, help="none, efficientnet_lite0_imagenet or a weights file")
    p.add_argument("--decoder", required=True, choices=DECODERS)
    p.add_argument("--out", type=Path, required=True, help="final model file (written when training is done)")
    p.add_argument("--checkpoint", type=Path, required=True, help="resumable training state")
    p.add_argument("--metrics", type=Path, required=True, help="per-step metrics CSV")
    add_training_arguments(p)
    args = p.parse_args(argv)
    try:
        args.method_options = json.loads(args.method_options)
    except json.JSONDecodeError as exc:
        p.error(f"--method-options is not JSON: {exc}")
    if not isinstance(args.method_options, dict):
        p.error("--method-options must be a JSON object")
    return args


def train(args: argparse.Namespace, ctx: DistContext) -> nn.Module:
    """Train (or resume) and write the final model file; returns the bare trained model."""
    index = DatasetIndex.load(args.index)
    method = get_method(args.method, args.method_options)
    inputs = TrainInputs(index, args.split, args.pseudo_labels, args.init_from_cam)
    missing = missing_inputs(method, inputs)
    if missing:
        raise ValueError(f"method {method.name!r} needs {', '.join(NEED_FLAGS[m] for m in missing)}")

    torch.manual_seed(args.seed)
    spec = SegmenterSpec(args.backbone, args.decoder, index.num_classes, args.weights)
    model = method.build_model(spec)
    if args.init_from_cam is not None:
        init_backbone_from_cam(model.backbone, spec.backbone, args.init_from_cam)
    if ctx.distributed and ctx.on_gpu:
        # per-GPU batches of a few crops make per-process BatchNorm statistics too noisy
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)

    dataset = method.build_dataset(inputs, augment_config(args), args.seed)
    optimizer = build_optimizer(args.optimizer, model.param_groups(args.head_lr_mult),
                                args.lr, args.weight_decay)
    scheduler = poly_schedule(optimizer, args.steps)
    meta = {
        "method": method.name, "method_options": args.method_options, "backbone": spec.backbone,
        "weights": spec.weights, "decoder": spec.decoder, "classes": index.classes,
        "dataset": index.name, "split": args.split,
        "init_from_cam": file_sha256(args.init_from_cam) if args.init_from_cam else None,
        "train": training_meta(args, ctx.world_size),
    }
    rows = train_loop(model, optimizer, scheduler, dataset, method.step, loop_config(args), ctx,
                      args.checkpoint, args.metrics, meta)
    if ctx.is_main:
        save_checkpoint(args.out, {"model": model.state_dict(), "meta": meta})
        last = f"final loss {rows[-1]['loss']:.4f}; " if rows else ""
        print(f"trained {method.name} for {args.steps} steps ({last}model written to {args.out})",
              file=sys.stderr)
    return model


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    with distributed_session(args.device) as ctx:
        train(args, ctx)


if __name__ == "__main__":
    main()
