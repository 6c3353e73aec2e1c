"""The PL-Mix round loop, resumable at every level (on ``stages.runtime.rounds.RoundStore``).

Round r (1..R), with ``camT`` the current background threshold:

1. pseudo labels of the training split (CRF at ``camT``) from the CAM file of the current
   network: infer_cam's file of the input network for round 1, round r-1's file after that;
2. + 3. ``steps`` training steps on mixed images (the trainer's loop: resumable, DDP, metrics);
4. one pass of the trained network over the training split into the round's CAM file, and the
   threshold sweep on the evaluation split from it; its best threshold becomes ``camT``.

Each image is thus inferred once per round, and the last round's CAM file is the refinement's
CAM file (what infer_cam would make of its network). A round's folder holds::

    labels/<id>.png     the round's pseudo labels (kept for inspection)
    train.pt            the trainer's checkpoint within the round (deleted once done)
    train_metrics.csv   per-step loss terms
    model.pt            the network after the round, a CAM network file (infer_cam reads it)
    cams.h5             its CAMs of the training split (deleted once the next round's labels are made)
    summary.json        the round's row of the rounds table (the store's done marker)
"""
from __future__ import annotations

import contextlib
import dataclasses
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.distributed as dist

from stages.cams.multiscale import infer_to_file, network_cam_meta
from stages.cams.threshold import threshold_grid
from stages.data.index import DatasetIndex
from stages.data.transforms import AugmentConfig
from stages.io.atomic import atomic_path
from stages.io.cam_store import CamFileMeta, CamReader, update_meta
from stages.io.checkpoint import file_sha256, load_checkpoint, save_model
from stages.labels.crf import CRFParams
from stages.models.cam_net import CAMNet
from stages.plmix.passes import CamInference, sweep_cams, write_round_labels
from stages.plmix.paste import PasteSettings
from stages.plmix.training import CamsAndLogits, MixCollate, MixLoss, MixStep, PseudoLabelledCrops
from stages.runtime.distributed import DistContext
from stages.runtime.rounds import RoundStore
from stages.runtime.settings import TrainSettings
from stages.runtime.trainer import train_loop

CAMS_FILE = "cams.h5"  # a round's CAMs of the training split
LOSS_TERMS = ("loss", "classification", "focal", "soft_iou", "soft_dice", "continuity")


@dataclass(frozen=True)
class PLMixSettings:
    """PL-Mix's own settings; with the round's ``TrainSettings`` everything that shapes the result."""

    rounds: int
    paste_transform_from_round: int
    paste_scale_range: tuple[float, float]
    paste_max_rotation: float
    loss: MixLoss
    crf: CRFParams
    scales: tuple[float, ...]
    flip: bool
    threshold_range: tuple[float, float, float]  # start, stop, step of the sweep

    def paste(self, round_number: int) -> PasteSettings:
        return PasteSettings(transform=round_number >= self.paste_transform_from_round,
                             scale_range=self.paste_scale_range, max_rotation=self.paste_max_rotation)


@dataclass(frozen=True)
class Operations:
    """How the passes are carried out; none of it changes the result."""

    crf_workers: int
    infer_batch_size: int = 8


@dataclass
class RoundState:
    completed: int
    threshold: float  # camT after the last completed round
    rows: list[dict[str, Any]]
    model: Path | None = None  # the last completed round's network file (set when the rounds end)
    cams: Path | None = None  # its CAM file of the training split (likewise)


def refinement_meta(rounds: int, from_sha256: str, threshold: float) -> dict[str, Any]:
    """What a refined CAM network file says about its making (infer_cam copies it onward)."""
    return {"method": "plmix", "rounds": rounds, "from_checkpoint_sha256": from_sha256,
            "final_threshold": threshold}


def state_meta(settings: PLMixSettings, provenance: dict[str, Any]) -> dict[str, Any]:
    """What a state directory belongs to, as plain JSON values (tuples become lists).

    ``provenance``: the input network's hash, the start threshold, the splits and the training
    settings (``TrainSettings.meta``) -- whatever else shapes the rounds.
    """
    shaping = {k: v for k, v in dataclasses.asdict(settings).items() if k != "rounds"}
    return {**provenance, "plmix": shaping}


def _sync_buffers(model: torch.nn.Module, ctx: DistContext) -> None:
    """Give every rank rank 0's BatchNorm statistics: DDP broadcasts them before each forward, so
    after the last step each rank holds its own, and the passes must agree on one network."""
    if ctx.distributed:
        for buffer in model.buffers():
            dist.broadcast(buffer, src=0)


ROUND_COLUMNS = ("round", "label_threshold", "paste_transform", *LOSS_TERMS, "skipped_steps",
                 "eval_threshold", "eval_miou")


def _write_rows(path: Path, rows: list[dict[str, Any]]) -> None:
    with atomic_path(path) as tmp:
        pd.DataFrame(rows, columns=list(ROUND_COLUMNS)).to_csv(tmp, index=False, float_format="%.6f")


def _train_round(net: CAMNet, index: DatasetIndex, split: str, r: int, camT: float, settings: PLMixSettings,
                 training: TrainSettings, round_dir: Path, meta: dict[str, Any], ctx: DistContext) -> dict[str, Any]:
    """Steps 2 and 3 of round ``r`` on its pseudo labels; the round's mean loss terms."""
    training = dataclasses.replace(training, seed=training.seed * 1000 + r)  # new crops and pairs
    dataset = PseudoLabelledCrops(index, split, round_dir / "labels", AugmentConfig.from_settings(training),
                                  settings.paste(r), training.seed)
    steps = pd.DataFrame(train_loop(
        CamsAndLogits(net), MixStep(settings.loss, camT), dataset, training, ctx, round_dir / "train.pt",
        round_dir / "train_metrics.csv", {"refine": meta, "round": r, "camT": camT},
        collate_fn=MixCollate(index.num_classes), image_classes=index.image_classes(split)))
    _sync_buffers(net, ctx)
    return {**{term: float(steps[term].mean()) for term in LOSS_TERMS}, "skipped_steps": int(steps["skipped"].iloc[-1])}


def _best_threshold(cams: CamReader, net: CAMNet, index: DatasetIndex, eval_split: str, settings: PLMixSettings,
                    inference: CamInference, ctx: DistContext) -> tuple[float, float]:
    """Step 4's sweep: the best threshold and its mIoU."""
    thresholds = threshold_grid(*settings.threshold_range)
    mious = np.array([m.miou() for m in sweep_cams(cams, net, index, eval_split, thresholds, inference, ctx)])
    best = int(np.nanargmax(mious))
    return float(thresholds[best]), float(mious[best])


class RoundCams:
    """The CAM files of the rounds' passes: written, found again on resume, and let go of."""

    def __init__(self, store: RoundStore, index: DatasetIndex, split: str, inference: CamInference,
                 ctx: DistContext) -> None:
        self.store, self.index, self.split, self.inference, self.ctx = store, index, split, inference, ctx

    def path(self, r: int) -> Path:
        return self.store.round_dir(r) / CAMS_FILE

    def meta(self, net_meta: dict[str, Any], checkpoint_sha256: str) -> CamFileMeta:
        return network_cam_meta(self.index, self.split, net_meta, checkpoint_sha256, self.inference.scales,
                                self.inference.flip)

    def write(self, net: CAMNet, out: Path, meta: CamFileMeta) -> None:
        """The network's CAMs of the split into ``out`` (every rank takes part)."""
        net.eval()
        infer_to_file(net, self.index, self.index.ids(self.split), out, meta, self.inference.scales,
                      self.inference.flip, self.inference.batch_size, self.ctx, workers=self.inference.workers)

    def of_model(self, net: CAMNet, r: int) -> Path:
        """Round ``r``'s CAM file, made again from its model file (``net`` holds those weights) when
        a later round's labels let it go: fewer rounds asked of a finished run."""
        path, model = self.path(r), self.store.round_dir(r) / "model.pt"
        if not path.is_file():
            self.write(net, path, self.meta(load_checkpoint(model)["meta"], file_sha256(model)))
        return path

    def release(self, r: int) -> None:
        """Round ``r``'s CAM file has served the next round's labels (rank 0 deletes it)."""
        if self.ctx.is_main and r >= 1:
            self.path(r).unlink(missing_ok=True)


def run_rounds(net: CAMNet, index: DatasetIndex, split: str, eval_split: str, start: tuple[float, float],
               settings: PLMixSettings, training: TrainSettings, ops: Operations, state_dir: Path,
               rounds_csv: Path, meta: dict[str, Any], net_meta: dict[str, Any], ctx: DistContext,
               input_cams: CamReader | None = None) -> RoundState:
    """Refine ``net`` in place for ``settings.rounds`` rounds, resuming from ``state_dir``.

    ``start`` is eval_cam's (best threshold, its mIoU) for the unrefined network: round 1's
    ``camT``, and row 0 of the rounds table. ``meta`` holds the settings (``state_meta``),
    ``net_meta`` the input network's meta, which each round's model file carries on.
    ``input_cams``, the unrefined network's CAM file of ``split`` (infer_cam's, with the
    settings' scales and flip), gives round 1's labels without a pass of the network; a round
    whose source file is missing (no ``input_cams``, or more rounds asked of a finished run)
    makes it first. ``rounds_csv`` is rewritten after every round.
    """
    store = RoundStore(state_dir, meta, ctx)
    done = store.completed(settings.rounds)
    state = RoundState(len(done), done[-1]["eval_threshold"] if done else start[0],
                       [{"round": 0, "eval_threshold": start[0], "eval_miou": start[1]}] + done)
    if done:
        last = store.round_dir(len(done))
        redo = f"delete {last} to redo round {len(done)}"
        net.load_state_dict(load_checkpoint(last / "model.pt", remedy=redo)["model"])
        if ctx.is_main:
            print(f"resuming after round {len(done)} (camT {state.threshold:.3f})", file=sys.stderr)
    net.to(ctx.device)
    inference = CamInference(settings.scales, settings.flip, batch_size=ops.infer_batch_size)
    files = RoundCams(store, index, split, inference, ctx)
    for r in range(state.completed + 1, settings.rounds + 1):
        round_dir, camT = store.round_dir(r), state.threshold
        if ctx.is_main:
            print(f"round {r}/{settings.rounds}: pseudo labels at camT {camT:.3f}", file=sys.stderr)
        if not all((round_dir / "labels" / f"{i}.png").is_file() for i in index.ids(split)):
            if r == 1 and input_cams is not None:
                source = contextlib.nullcontext(input_cams)
            else:
                path = files.path(r - 1)
                if r == 1 or not path.is_file():  # no input file, or a finished run asked for more rounds
                    path = round_dir / "source_cams.h5"
                    files.write(net, path, files.meta(net_meta, ""))
                source = CamReader(path)
            with source as cams:
                write_round_labels(cams, index, split, camT, settings.crf, round_dir / "labels", ctx,
                                   ops.crf_workers)
        if ctx.is_main:
            (round_dir / "source_cams.h5").unlink(missing_ok=True)
        files.release(r - 1)
        terms = _train_round(net, index, split, r, camT, settings, training, round_dir, meta, ctx)
        files.write(net, files.path(r), files.meta(net_meta, ""))  # its hash is stamped once the model file exists
        with CamReader(files.path(r)) as cams:
            threshold, miou = _best_threshold(cams, net, index, eval_split, settings, inference, ctx)
        row = {"round": r, "label_threshold": camT, "paste_transform": settings.paste(r).transform, **terms,
               "eval_threshold": threshold, "eval_miou": miou}
        state = RoundState(r, threshold, state.rows + [row])
        if ctx.is_main:
            round_meta = {**net_meta, "refinement": refinement_meta(r, meta["from_checkpoint_sha256"], threshold)}
            save_model(round_dir / "model.pt", net, round_meta)
            update_meta(files.path(r), files.meta(round_meta, file_sha256(round_dir / "model.pt")))
        store.finish(r, row)
        if ctx.is_main:
            (round_dir / "train.pt").unlink(missing_ok=True)
            _write_rows(rounds_csv, state.rows)
            print(f"round {r}: {eval_split} mIoU {miou:.4f} at camT {threshold:.3f}", file=sys.stderr)
    if ctx.is_main:
        _write_rows(rounds_csv, state.rows)
    return dataclasses.replace(state, model=store.round_dir(state.completed) / "model.pt",
                               cams=files.of_model(net, state.completed))
