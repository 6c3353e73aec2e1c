"""What a round makes of a CAM file of the network being refined: pseudo labels and the sweep.

The round's pass writes the network's CAMs of the training split to a CAM file, as infer_cam
would (``stages.cams.multiscale``: the given scales and flip, present classes only, each map
divided by its maximum, 8 bits); the threshold sweep and the next round's pseudo labels both
read that file, so each image is inferred once per round, and the last round's file is the
refinement's CAM file. Under DDP every rank takes a shard of the ids; the sweep's confusion
matrices are summed over ranks.
"""
from __future__ import annotations

import multiprocessing as mp
import multiprocessing.pool
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from stages.cams.multiscale import write_cams
from stages.cams.threshold import sweep_thresholds
from stages.data.images import load_rgb
from stages.data.index import DatasetIndex
from stages.errors import InputError
from stages.io.cam_store import CamEntry, CamReader
from stages.io.label_png import read_label, write_label
from stages.labels.crf import CRFParams
from stages.labels.pseudo import PseudoLabelSettings, pseudo_label
from stages.metrics.confusion import ConfusionMatrix
from stages.models.cam_net import CAMNet
from stages.runtime.distributed import DistContext, all_reduce_sum, barrier
from stages.runtime.progress import progress_bar


@dataclass(frozen=True)
class CamInference:
    """How a pass computes CAMs: infer_cam's settings, so thresholds carry over between them."""

    scales: tuple[float, ...]
    flip: bool
    batch_size: int = 8  # images per forward pass; results do not depend on it
    workers: int = 0  # image-decoding processes


def _label_task(task: tuple[str, np.ndarray, np.ndarray, PseudoLabelSettings, str]) -> None:
    image_path, cams, class_indices, settings, out_path = task
    image = load_rgb(image_path)
    if image.shape[:2] != cams.shape[1:]:
        raise InputError(f"{image_path}: image {image.shape[:2]} but CAMs {cams.shape[1:]}")
    write_label(out_path, pseudo_label(image, CamEntry(cams, class_indices), settings))


class _LabelSink:
    """Receives each image's CAMs and has its CRF pseudo label written, by a pool when asked.

    At most a few tasks per worker wait at any time, so CAMs do not pile up in memory.
    """

    def __init__(self, index: DatasetIndex, settings: PseudoLabelSettings, out_dir: Path,
                 pool: mp.pool.Pool | None, workers: int) -> None:
        self.index, self.settings, self.out_dir, self.pool = index, settings, out_dir, pool
        self.pending: deque = deque()
        self.max_pending = 4 * max(1, workers)

    def write(self, image_id: str, cams: np.ndarray, class_indices: Sequence[int]) -> None:
        task = (str(self.index.image_path(image_id)), cams, np.asarray(class_indices),
                self.settings, str(self.out_dir / f"{image_id}.png"))
        if self.pool is None:
            _label_task(task)
            return
        self.pending.append(self.pool.apply_async(_label_task, (task,)))
        while len(self.pending) > self.max_pending:
            self.pending.popleft().get()

    def finish(self) -> None:
        while self.pending:
            self.pending.popleft().get()


def write_round_labels(cams: CamReader, index: DatasetIndex, split: str, threshold: float, crf: CRFParams,
                       out_dir: Path, ctx: DistContext, crf_workers: int) -> None:
    """<id>.png pseudo labels (CRF at background score ``threshold``) for every image of ``split``.

    ``cams`` holds the CAMs of the network the labels belong to (the caller checks it). Each PNG
    is written atomically, so ids whose PNG exists are complete and skipped: a killed pass
    resumes where it stopped.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    todo = [i for i in index.ids(split)[ctx.rank::ctx.world_size] if not (out_dir / f"{i}.png").is_file()]
    settings = PseudoLabelSettings(threshold=threshold, ignore_band=0.0, crf=crf, num_classes=index.num_classes)
    if todo:
        with progress_bar(total=len(todo), desc=f"pseudo labels {split}", unit="img",
                          disable=not ctx.is_main) as bar:
            # fork: workers need only numpy, PIL and pydensecrf, which the parent has imported
            pool = mp.get_context("fork").Pool(crf_workers) if crf_workers > 1 else None
            try:
                sink = _LabelSink(index, settings, out_dir, pool, crf_workers)
                for image_id, entry in cams.entries(todo):
                    sink.write(image_id, entry.cams, entry.class_indices)
                    bar.update(1)
                sink.finish()
            finally:
                if pool is not None:
                    pool.terminate()
                    pool.join()
    barrier(ctx)


class SweepSink:
    """Accumulates, per threshold, the confusion matrix of the CAM labels against the masks."""

    def __init__(self, index: DatasetIndex, split: str, thresholds: np.ndarray) -> None:
        self.index, self.split, self.thresholds = index, split, thresholds
        self.matrices = [ConfusionMatrix(index.num_classes) for _ in thresholds]

    def write(self, image_id: str, cams: np.ndarray, class_indices: Sequence[int]) -> None:
        mask_path = self.index.mask_path(image_id, self.split)
        gt = read_label(mask_path)
        if gt.shape != cams.shape[1:]:
            raise InputError(f"{mask_path}: mask {gt.shape} but CAMs of {image_id!r} {cams.shape[1:]}")
        for total, one in zip(self.matrices, sweep_thresholds([(gt, cams, class_indices)],
                                                               self.thresholds, self.index.num_classes)):
            total.merge(one)


def sweep_cams(cams: CamReader, net: CAMNet, index: DatasetIndex, split: str, thresholds: np.ndarray,
               inference: CamInference, ctx: DistContext) -> list[ConfusionMatrix]:
    """eval_cam's background-threshold sweep of the network's CAMs on ``split``, over all ranks.

    Images of ``cams`` (the network's file of the training split) are read from it; any others
    of ``split`` get a pass of ``net``.
    """
    sink = SweepSink(index, split, thresholds)
    ids = index.ids(split)[ctx.rank::ctx.world_size]
    stored = [i for i in ids if i in cams]
    missing = [i for i in ids if i not in cams]
    with progress_bar(total=len(ids), desc=f"sweep {split}", unit="img", disable=not ctx.is_main) as bar:
        for image_id, entry in cams.entries(stored):
            sink.write(image_id, entry.cams, entry.class_indices)
            bar.update(1)
        if missing:
            net.eval()
            write_cams(net, index, missing, sink, inference.scales, inference.flip, inference.batch_size, ctx,
                       workers=inference.workers, on_batch=bar.update)
    counts = torch.from_numpy(np.stack([np.append(m.matrix.ravel(), m.valid_gt) for m in sink.matrices]))
    counts = all_reduce_sum(counts.to(ctx.device), ctx).cpu().numpy()
    n = index.num_classes
    for m, row in zip(sink.matrices, counts):
        m.matrix, m.valid_gt = row[:n * n].reshape(n, n), int(row[-1])
    return sink.matrices
