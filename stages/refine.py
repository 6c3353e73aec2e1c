"""Stage: PL-Mix refinement of the CAM network by rounds of pseudo labels and mix-up training.

Reads the trained CAM network and eval_cam's best threshold, runs the rounds of
``stages.plmix`` (see its docstring for the method and the choices made where the source is
silent) and writes a CAM network file in train_cam's format, so that
``python -m stages.infer_cam --checkpoint <out>`` gives the refined CAMs. Its meta gains
``refinement`` = {method, rounds, from_checkpoint_sha256, final_threshold}. It also writes that
network's CAM file of ``--split`` (``--out-cams``, what infer_cam would write of ``--out``): the last
round's pass, which its threshold sweep read.

Round 1's pseudo labels come from ``--cams``, infer_cam's file of the input network, when given:
the same CAMs (stored at 8 bits) without a second pass of the network over the split.

Resumable: rounds done are kept in ``--state-dir``, and a round in progress resumes from the
trainer's checkpoint there. Runs under ``torchrun`` like train_cam.
"""
from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path

from stages.cams.threshold import read_best
from stages.data.index import DatasetIndex
from stages.errors import InputError, run_stage
from stages.io.atomic import publish_copy
from stages.io.cam_store import CamReader
from stages.io.checkpoint import check_meta, file_sha256
from stages.labels.crf import add_crf_arguments, crf_params_from
from stages.models.cam_net import load_cam_net
from stages.plmix.rounds import Operations, PLMixSettings, RoundState, run_rounds, state_meta
from stages.plmix.training import MixLoss
from stages.runtime.distributed import distributed_session
from stages.runtime.settings import add_training_arguments, settings_from
from stages.runtime.trainer import NonFiniteLossError


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    io = p.add_argument_group("inputs and outputs")
    io.add_argument("--index", type=Path, required=True, help="data set index JSON")
    io.add_argument("--split", required=True, help="split whose images are pseudo-labelled and mixed (train_aug)")
    io.add_argument("--eval-split", required=True, help="split with masks for the threshold sweep (train)")
    io.add_argument("--checkpoint", type=Path, required=True, help="CAM network file of train_cam")
    io.add_argument("--best", type=Path, required=True, help='eval_cam\'s JSON {"threshold": t, "miou": m}')
    io.add_argument("--cams", type=Path,
                    help="infer_cam's CAM file of --split from --checkpoint: round 1's pseudo labels come "
                         "from it instead of a pass of the network")
    io.add_argument("--out", type=Path, required=True, help="refined CAM network file, written at the end")
    io.add_argument("--out-cams", type=Path, required=True,
                    help="its CAM file of --split (infer_cam's format, --scales and --flip), written at the end")
    io.add_argument("--rounds-csv", type=Path, required=True, help="one row per round (round 0 = input)")
    io.add_argument("--state-dir", type=Path, required=True, help="resumable round state")
    mix = p.add_argument_group("PL-Mix")
    mix.add_argument("--rounds", type=int, required=True)
    mix.add_argument("--paste-transform-from-round", type=int, required=True,
                     help="first round whose pasted objects are rotated and rescaled")
    mix.add_argument("--paste-scale-range", type=float, nargs=2, required=True, metavar=("MIN", "MAX"),
                     help="rescale of the pasted object (log-uniform)")
    mix.add_argument("--paste-max-rotation", type=float, required=True, help="degrees, uniform in [-max, max]")
    mix.add_argument("--focal-weight", type=float, required=True)
    mix.add_argument("--iou-weight", type=float, required=True)
    mix.add_argument("--dice-weight", type=float, required=True)
    mix.add_argument("--continuity-weight", type=float, required=True)
    mix.add_argument("--focal-gamma", type=float, required=True)
    mix.add_argument("--temperature", type=float, required=True,
                     help="softmax temperature of the normalised CAM scores against camT")
    # --steps counts the steps of each round; the lr decays (poly) to 0 within every round
    add_training_arguments(p)
    cams = p.add_argument_group("CAMs of the passes (as in infer_cam) and the sweep (as in eval_cam)")
    cams.add_argument("--scales", type=float, nargs="+", required=True)
    cams.add_argument("--flip", action=argparse.BooleanOptionalAction, required=True)
    cams.add_argument("--threshold-start", type=float, required=True)
    cams.add_argument("--threshold-stop", type=float, required=True)
    cams.add_argument("--threshold-step", type=float, required=True)
    crf = p.add_argument_group("dense CRF of the round's pseudo labels (as in pseudo_labels)")
    add_crf_arguments(crf)
    p.add_argument("--crf-workers", type=int, default=1, help="CRF processes (per process under torchrun)")
    p.add_argument("--infer-batch-size", type=int, default=8, help="images per forward pass in the passes")
    args = p.parse_args(argv)
    problems = []
    if args.rounds < 1 or args.paste_transform_from_round < 1:
        problems.append("--rounds and --paste-transform-from-round must be >= 1")
    if args.batch_size < 2:
        problems.append("--batch-size must be >= 2: each image is pasted onto another of its batch")
    lo, hi = args.paste_scale_range
    if not 0 < lo <= hi:
        problems.append(f"--paste-scale-range needs 0 < MIN <= MAX, got {lo} {hi}")
    if args.temperature <= 0:
        problems.append(f"--temperature must be > 0, got {args.temperature}")
    if problems:
        p.error("; ".join(problems))
    return args


def plmix_settings_from(args: argparse.Namespace) -> PLMixSettings:
    return PLMixSettings(
        rounds=args.rounds, paste_transform_from_round=args.paste_transform_from_round,
        paste_scale_range=tuple(args.paste_scale_range), paste_max_rotation=args.paste_max_rotation,
        loss=MixLoss(focal_weight=args.focal_weight, iou_weight=args.iou_weight, dice_weight=args.dice_weight,
                     continuity_weight=args.continuity_weight, focal_gamma=args.focal_gamma,
                     temperature=args.temperature),
        crf=crf_params_from(args),
        scales=tuple(args.scales), flip=args.flip,
        threshold_range=(args.threshold_start, args.threshold_stop, args.threshold_step))


def check_input_cams(cams: CamReader, args: argparse.Namespace, settings: PLMixSettings, source_sha: str,
                     index: DatasetIndex) -> None:
    """Round 1 may read the CAM file only if a pass of the input network would give its CAMs."""
    expected = {"checkpoint_sha256": (cams.meta.checkpoint_sha256, source_sha),
                "split": (cams.meta.split, args.split),
                "scales": (tuple(cams.meta.scales), settings.scales), "flip": (cams.meta.flip, settings.flip)}
    for name, (found, wanted) in expected.items():
        if found != wanted:
            raise InputError(f"{args.cams}: CAMs made with {name} {found!r}, not this refinement's {wanted!r} "
                             f"(--checkpoint {args.checkpoint}, --split, --scales, --flip)")
    cams.check_matches(index, index.ids(args.split))


def write_outputs(state: RoundState, args: argparse.Namespace) -> None:
    """The last round's network file and its CAM file, as the stage's outputs (rank 0)."""
    publish_copy(state.model, args.out)  # the same bytes: the CAM file's hash names it
    publish_copy(state.cams, args.out_cams)
    print(f"refined CAM network written to {args.out} and its CAMs to {args.out_cams} after {args.rounds} "
          f"round(s); final camT {state.threshold:.3f}")


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    index = DatasetIndex.load(args.index)
    start = read_best(args.best)
    settings = plmix_settings_from(args)
    training = settings_from(args)
    ops = Operations(crf_workers=args.crf_workers, infer_batch_size=args.infer_batch_size)
    with distributed_session(args.device, args.precision, args.channels_last) as ctx:
        net, source_meta = load_cam_net(args.checkpoint, ctx.device)
        check_meta(args.checkpoint, source_meta, {"dataset": index.name, "classes": list(index.classes)})
        source_sha = file_sha256(args.checkpoint)
        meta = state_meta(settings, {"from_checkpoint_sha256": source_sha, "start_threshold": start[0],
                                     "split": args.split, "eval_split": args.eval_split,
                                     "train": training.meta(ctx.world_size)})
        cams = CamReader(args.cams) if args.cams is not None else None
        with cams or contextlib.nullcontext():
            if cams is not None:
                check_input_cams(cams, args, settings, source_sha, index)
            try:
                state = run_rounds(net, index, args.split, args.eval_split, start, settings, training, ops,
                                   args.state_dir, args.rounds_csv, meta, source_meta, ctx, input_cams=cams)
            except NonFiniteLossError as exc:
                sys.exit(f"refine: {exc}; no model written to {args.out}")
        if ctx.is_main:
            write_outputs(state, args)


if __name__ == "__main__":
    run_stage(main)
