"""Train a segmenter with a registered method (``ce``, ...) on the shared cache.

Reads top to bottom: arguments -> method and its inputs -> model (optionally starting from the
CAM network's backbone or from another segmenter) -> data -> the shared resumable loop, driven by
the method's hooks -> final model file. Started by ``torchrun`` it trains with DDP; a plain
``python -m`` runs one process.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from torch import nn

from stages.data.index import DatasetIndex
from stages.data.transforms import AugmentConfig
from stages.errors import InputError, run_stage
from stages.io.checkpoint import file_sha256, files_sha256, save_model
from stages.io.label_png import label_path
from stages.methods.base import TrainInputs
from stages.methods.registry import METHODS, get_method, missing_inputs
from stages.models.decoders import DECODER_CHANNELS, DECODERS
from stages.models.segmenter import SegmenterSpec, init_from_segmenter
from stages.models.weight_names import NAMED_WEIGHTS
from stages.runtime.distributed import DistContext, distributed_session
from stages.runtime.settings import add_training_arguments, settings_from
from stages.runtime.trainer import train_loop


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--index", type=Path, required=True, help="prepared data set index (JSON)")
    p.add_argument("--split", required=True, help="split to train on, e.g. train_aug")
    p.add_argument("--method", required=True, choices=sorted(METHODS))
    p.add_argument("--method-options", default="{}", help="JSON object of the method's options")
    p.add_argument("--pseudo-labels", type=Path, help="folder of <id>.png pseudo labels for the split")
    p.add_argument("--cam-checkpoint", type=Path, help="CAM network file, for methods that read it")
    p.add_argument("--scribbles", type=Path, help="folder of <id>.png scribble maps for the split")
    p.add_argument("--init-from-cam", type=Path, help="CAM model file whose backbone starts the segmenter")
    p.add_argument("--init-from-model", type=Path,
                   help="trained segmenter file (another variant's model.pt) that starts the whole model")
    p.add_argument("--backbone", required=True)
    p.add_argument("--weights", required=True, help=f"{', '.join(NAMED_WEIGHTS)} or a weights file")
    p.add_argument("--decoder", required=True, choices=sorted(DECODERS))
    p.add_argument("--decoder-width", type=int, default=DECODER_CHANNELS, help="channels of the decoder's layers")
    p.add_argument("--out", type=Path, required=True, help="final model file (written when training is done)")
    p.add_argument("--checkpoint", type=Path, required=True, help="resumable training state")
    p.add_argument("--metrics", type=Path, required=True, help="per-step metrics CSV")
    p.add_argument("--state-dir", type=Path, help="the method's own files, kept across kills")
    p.add_argument("--outputs", type=Path, help="folder for what the method shows the user (report)")
    add_training_arguments(p)
    args = p.parse_args(argv)
    if args.init_from_cam and args.init_from_model:
        p.error("--init-from-cam and --init-from-model exclude each other")
    try:
        args.method_options = json.loads(args.method_options)
    except json.JSONDecodeError as exc:
        p.error(f"--method-options is not JSON: {exc}")
    if not isinstance(args.method_options, dict):
        p.error("--method-options must be a JSON object")
    return args


def input_fingerprints(args: argparse.Namespace, index: DatasetIndex) -> dict[str, str]:
    """Content hashes of what the training reads: a checkpoint left by a run on other pseudo
    labels, scribbles, CAM network or split is not resumed (the workflow reruns this stage when
    an input changes, and a finished checkpoint would otherwise come back as the new model)."""
    ids = index.ids(args.split)
    found = {"split": index.fingerprint(args.split)}
    for name in ("pseudo_labels", "scribbles"):
        folder = getattr(args, name)
        if folder is not None:
            found[name] = files_sha256(label_path(folder, i) for i in ids)
    if args.cam_checkpoint is not None:
        found["cam_checkpoint"] = file_sha256(args.cam_checkpoint)
    return found


def train(args: argparse.Namespace, ctx: DistContext) -> nn.Module:
    """Train (or resume) and write the final model file; returns the bare trained model."""
    index = DatasetIndex.load(args.index)
    method = get_method(args.method, args.method_options)
    inputs = TrainInputs(index, args.split, args.pseudo_labels, args.cam_checkpoint, scribbles=args.scribbles)
    missing = missing_inputs(method, inputs)
    if missing:
        raise InputError(f"method {method.name!r} needs {', '.join(missing)}")
    settings = settings_from(args)
    torch.manual_seed(settings.seed)
    spec = SegmenterSpec(args.backbone, args.decoder, index.num_classes, args.weights, args.decoder_width)
    model = method.build_model(spec, inputs)
    if args.init_from_cam is not None:
        method.init_from_cam(model, spec, args.init_from_cam)
    if args.init_from_model is not None:
        init_from_segmenter(model, args.init_from_model)
    if ctx.distributed and ctx.on_gpu:
        # per-GPU batches of a few crops make per-process BatchNorm statistics too noisy
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)

    dataset = method.build_dataset(inputs, AugmentConfig.from_settings(settings), settings.seed)
    init = args.init_from_cam or args.init_from_model
    meta = {
        "method": method.name, "method_options": args.method_options, "backbone": spec.backbone,
        "weights": spec.weights, "decoder": spec.decoder,
        "decoder_width": spec.decoder_width, "classes": index.classes,
        "dataset": index.name, "split": args.split,
        "init": {"from": "cam" if args.init_from_cam else "model" if args.init_from_model else None,
                 "sha256": file_sha256(init) if init else None},
        "train": settings.meta(ctx.world_size),
        "inputs": input_fingerprints(args, index),
    }
    for folder in (args.state_dir, args.outputs):
        if folder is not None and ctx.is_main:
            folder.mkdir(parents=True, exist_ok=True)
    rows = train_loop(model, method, dataset, settings, ctx, args.checkpoint, args.metrics, meta,
                      state_dir=args.state_dir, output_dir=args.outputs,
                      image_classes=index.image_classes(args.split))
    if ctx.is_main:
        save_model(args.out, model, meta)
        last = f"final loss {rows[-1]['loss']:.4f}; " if rows else ""
        print(f"trained {method.name} for {settings.steps} steps ({last}model written to {args.out})",
              file=sys.stderr)
    return model


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    with distributed_session(args.device, args.precision, args.channels_last) as ctx:
        train(args, ctx)


if __name__ == "__main__":
    run_stage(main)
