"""Stage: IRN-style affinity refinement of a CAM file: ``train`` the affinity network, then ``walk``.

``train`` labels pixel pairs from the confident regions of the source CAMs (``--cams``, the
training split), trains the affinity network on them with the shared resumable loop (under
``torchrun`` too) and writes it to ``--out``. ``walk`` propagates the source CAMs of a split
along the network's affinities and writes a CAM file in ``stages.io.cam_store``'s format, so
pseudo labels, evaluation and every variant read it unchanged. ``stages/irn/__init__.py`` lists
the method and the choices the papers leave open.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

import torch
from torch import nn

from stages.cams.threshold import read_best
from stages.data.index import DatasetIndex
from stages.data.segmentation import SegmentationDataset, label_dir_source
from stages.data.transforms import AugmentConfig
from stages.errors import run_stage
from stages.io.cam_store import CamFileMeta, CamReader, CamWriter, merge_shards, shard_path
from stages.io.checkpoint import check_meta, file_sha256, save_model
from stages.irn.labels import ConfidenceThresholds, confident_label_settings, write_confident_labels
from stages.irn.net import AffinityNet, AffinitySpec, load_affinity_net
from stages.irn.pairs import half_offsets
from stages.irn.refined_cams import write_refined_cams
from stages.irn.training import AffinityStep
from stages.irn.walk import WalkSettings
from stages.labels.crf import add_crf_arguments, crf_params_from
from stages.models.cam_net import load_cam_net
from stages.models.decoders import DECODERS
from stages.models.segmenter import init_backbone_from_cam
from stages.runtime.distributed import add_device_arguments, barrier, distributed_session
from stages.runtime.progress import progress_bar
from stages.runtime.settings import add_training_arguments, settings_from
from stages.runtime.trainer import train_loop


def add_train_command(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser("train", help="learn affinities from the source CAMs' confident regions")
    io = p.add_argument_group("inputs and outputs")
    io.add_argument("--index", type=Path, required=True, help="data set index JSON")
    io.add_argument("--split", required=True, help="split whose images and CAMs train the network (train_aug)")
    io.add_argument("--cams", type=Path, required=True, help="the source CAM file of --split")
    io.add_argument("--best", type=Path, required=True, help="eval_cam's best threshold of the source CAMs")
    io.add_argument("--cam-checkpoint", type=Path, required=True,
                    help="CAM network file: the backbone's name, and its weights with --init cam")
    io.add_argument("--out", type=Path, required=True, help="affinity network file, written at the end")
    io.add_argument("--metrics", type=Path, required=True, help="per-step metrics CSV")
    io.add_argument("--state-dir", type=Path, required=True, help="confident labels and the training state")
    irn = p.add_argument_group("IRN")
    irn.add_argument("--thresholds", choices=("relative", "absolute"), required=True,
                     help="relative: --fg/--bg-threshold are multiples of the source's best threshold")
    irn.add_argument("--fg-threshold", type=float, required=True, help="confident foreground above this")
    irn.add_argument("--bg-threshold", type=float, required=True, help="confident background at or below this")
    irn.add_argument("--use-crf", action=argparse.BooleanOptionalAction, required=True,
                     help="dense CRF on the confident regions (IRN, AffinityNet)")
    irn.add_argument("--radius", type=int, required=True, help="pairs closer than this on the grid")
    irn.add_argument("--stride", type=int, choices=(4, 8), required=True, help="of the embedding grid")
    irn.add_argument("--embedding-dim", type=int, required=True)
    irn.add_argument("--decoder", choices=sorted(DECODERS), required=True, help="the embedding head")
    irn.add_argument("--init", choices=("cam", "none"), required=True,
                     help="cam: the backbone starts from the CAM network's; none: from --weights")
    irn.add_argument("--weights", default="none", help="backbone weights with --init none")
    add_training_arguments(p)
    add_crf_arguments(p.add_argument_group("dense CRF of the confident regions (with --use-crf)"))
    p.add_argument("--crf-workers", type=int, default=1, help="CRF processes")


def add_walk_command(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser("walk", help="propagate a split's source CAMs along the affinities")
    p.add_argument("--index", type=Path, required=True, help="data set index JSON")
    p.add_argument("--split", required=True)
    p.add_argument("--cams", type=Path, required=True, help="the source CAM file of --split")
    p.add_argument("--model", type=Path, required=True, help="affinity network file of the train command")
    p.add_argument("--out", type=Path, required=True, help="refined HDF5 CAM file to write")
    p.add_argument("--beta", type=float, required=True, help="power of the affinities")
    p.add_argument("--log-t", type=int, required=True, help="the walk takes 2^log_t steps")
    p.add_argument("--alpha", type=float, required=True, help="background score (1 - max CAM)^alpha")
    add_device_arguments(p)
    p.add_argument("--workers", type=int, default=0, help="image decoding processes")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = p.add_subparsers(dest="command", required=True)
    add_train_command(commands)
    add_walk_command(commands)
    args = p.parse_args(argv)
    if args.command == "train" and args.radius < 2:
        p.error(f"--radius must be >= 2, got {args.radius}")
    if args.command == "walk" and (args.log_t < 0 or args.beta <= 0 or args.alpha <= 0):
        p.error("--log-t must be >= 0, --beta and --alpha > 0")
    return args


def train(args: argparse.Namespace) -> None:
    index = DatasetIndex.load(args.index)
    thresholds = ConfidenceThresholds(args.thresholds, args.fg_threshold, args.bg_threshold)
    bg, fg = thresholds.resolve(read_best(args.best)[0])
    crf = crf_params_from(args) if args.use_crf else None
    settings = settings_from(args)
    _, cam_meta = load_cam_net(args.cam_checkpoint)
    check_meta(args.cam_checkpoint, cam_meta, {"dataset": index.name, "classes": list(index.classes)})
    spec = AffinitySpec(cam_meta["backbone"], args.decoder, args.embedding_dim, args.stride,
                        "none" if args.init == "cam" else args.weights)
    labels_meta = {"cams_sha256": file_sha256(args.cams), "split": args.split, "bg": bg, "fg": fg,
                   "crf": dataclasses.asdict(crf) if crf else None}
    with distributed_session(args.device, args.precision, args.channels_last) as ctx:
        confident = confident_label_settings(bg, fg, crf, index.num_classes)
        labels = write_confident_labels(index, args.cams, args.split, confident, args.state_dir, labels_meta,
                                        args.crf_workers, ctx)
        torch.manual_seed(settings.seed)
        model = AffinityNet(spec)
        if args.init == "cam":
            init_backbone_from_cam(model.backbone, spec.backbone, args.cam_checkpoint)
        if ctx.distributed and ctx.on_gpu:
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        dataset = SegmentationDataset(index, args.split, label_dir_source(labels, index.ids(args.split)),
                                      AugmentConfig.from_settings(settings), settings.seed)
        meta = {"method": "irn", "spec": dataclasses.asdict(spec), "radius": args.radius, "dataset": index.name,
                "classes": index.classes, "labels": labels_meta,
                "init": {"from": args.init,
                         "sha256": file_sha256(args.cam_checkpoint) if args.init == "cam" else None},
                "train": settings.meta(ctx.world_size)}
        rows = train_loop(model, AffinityStep(half_offsets(args.radius)), dataset, settings, ctx,
                          args.state_dir / "train.pt", args.metrics, meta,
                          image_classes=index.image_classes(args.split))
        if ctx.is_main:
            save_model(args.out, model, meta)
            last = f"final loss {rows[-1]['loss']:.4f}; " if rows else ""
            print(f"affinity network trained for {settings.steps} steps ({last}written to {args.out})",
                  file=sys.stderr)


def walk(args: argparse.Namespace) -> None:
    index = DatasetIndex.load(args.index)
    ids = index.ids(args.split)
    settings = WalkSettings(beta=args.beta, log_t=args.log_t, alpha=args.alpha)
    with CamReader(args.cams) as source, distributed_session(args.device, args.precision, args.channels_last) as ctx:
        source.check_matches(index, ids)
        net, meta = load_affinity_net(args.model, ctx.device)
        check_meta(args.model, meta, {"dataset": index.name, "classes": list(index.classes)})
        origin = source.meta
        refinement = {"method": "irn", "radius": meta["radius"], "stride": meta["spec"]["stride"],
                      **dataclasses.asdict(settings), "source_checkpoint_sha256": origin.checkpoint_sha256,
                      "source_refinement": json.loads(origin.refinement) if origin.refinement else None}
        file_meta = CamFileMeta(
            dataset=index.name, split=args.split, classes=tuple(index.classes), backbone=origin.backbone,
            scales=origin.scales, flip=origin.flip, checkpoint_sha256=file_sha256(args.model),
            source="refine_irn", refinement=json.dumps(refinement, sort_keys=True))
        my_ids = ids[ctx.rank::ctx.world_size]
        target = shard_path(args.out, ctx.rank) if ctx.distributed else args.out
        with progress_bar(total=len(my_ids), desc=f"random walk {args.split}", unit="img",
                          disable=not ctx.is_main) as bar, CamWriter(target, file_meta) as writer:
            write_refined_cams(net, meta["radius"], index, my_ids, source, writer, settings, ctx,
                               workers=args.workers, on_image=lambda: bar.update(1))
        barrier(ctx)
        if ctx.distributed and ctx.is_main:
            merge_shards([shard_path(args.out, r) for r in range(ctx.world_size)], args.out, file_meta)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.command == "train":
        train(args)
    else:
        walk(args)


if __name__ == "__main__":
    run_stage(main)
