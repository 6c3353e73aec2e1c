"""Evaluate a trained segmenter on a split: single scale, multi-scale + flip, optionally dense CRF.

Images are streamed one at a time (memory stays flat in the number of images); each one updates
a ConfusionMatrix per mode, and its multi-scale prediction (after the CRF when that is on) is
written as a palette PNG. The first ``--panels`` images also get an image / prediction / truth
panel for the report. Folders are filled under a temporary name and renamed when complete.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from stages.data.images import load_rgb
from stages.data.index import DatasetIndex
from stages.data.tensors import to_tensor
from stages.errors import InputError, run_stage
from stages.io.atomic import atomic_dir, atomic_path
from stages.io.checkpoint import check_meta
from stages.io.label_png import colorize, read_label, write_label
from stages.labels.crf import CRFParams, add_crf_arguments, crf_params_from, dense_crf
from stages.methods.registry import load_trained_model
from stages.metrics.confusion import ConfusionMatrix
from stages.reporting.figures import new_figure, save_png
from stages.runtime.distributed import DistContext, add_device_arguments, autocast, distributed_session, inference_copy
from stages.runtime.progress import progress_bar

SINGLE, MULTISCALE, MULTISCALE_CRF = "single", "multiscale", "multiscale+crf"


class StreamingEvaluation:
    """One ConfusionMatrix per prediction mode, fed image by image."""

    def __init__(self, modes: Sequence[str], num_classes: int) -> None:
        self.matrices = {mode: ConfusionMatrix(num_classes) for mode in modes}
        self.n_images = 0

    def update(self, gt: np.ndarray, predictions: dict[str, np.ndarray]) -> None:
        if predictions.keys() != self.matrices.keys():
            raise ValueError(f"predictions for modes {sorted(predictions)}, expected {sorted(self.matrices)}")
        for mode, pred in predictions.items():
            self.matrices[mode].update(gt, pred)
        self.n_images += 1

    def metrics(self) -> pd.DataFrame:
        return pd.DataFrame([{"mode": mode, "miou": cm.miou(), "pixel_acc": cm.pixel_accuracy(),
                              **cm.error_shares(), "n_images": self.n_images}
                             for mode, cm in self.matrices.items()])

    def per_class(self, classes: Sequence[str]) -> pd.DataFrame:
        """IoU per class and mode, and the first mode's (the single pass's) class histogram beside the
        ground truth's (shares of the valid pixels), which names a collapse to one class."""
        table = pd.DataFrame({"class_index": range(len(classes)), "class": list(classes)})
        for mode, cm in self.matrices.items():
            table[mode] = cm.iou()
        counts = next(iter(self.matrices.values())).matrix
        total = max(int(counts.sum()), 1)
        table["gt_share"], table["pred_share"] = counts.sum(1) / total, counts.sum(0) / total
        return table


@torch.no_grad()
def predict_probs(model: nn.Module, image: np.ndarray, scales: Sequence[float], flip: bool,
                  ctx: DistContext) -> tuple[torch.Tensor, torch.Tensor]:
    """Class probabilities (K, H, W) at scale 1 alone, and averaged over ``scales`` (x flip)."""
    x = ctx.images(to_tensor(image).unsqueeze(0))
    h, w = image.shape[:2]

    def probs_at(scale: float, flipped: bool) -> torch.Tensor:
        """(1 or 2, K, H, W): the image's probabilities, and its mirror's mirrored back."""
        xs = x if scale == 1.0 else F.interpolate(
            x, size=(max(1, round(h * scale)), max(1, round(w * scale))), mode="bilinear", align_corners=False)
        batch = torch.cat([xs, xs.flip(-1)]) if flipped else xs
        with autocast(ctx):
            logits = model(batch).float()
        if flipped:
            logits[1] = logits[1].flip(-1)
        return F.interpolate(logits, size=(h, w), mode="bilinear", align_corners=False).softmax(dim=1)

    at_one = probs_at(1.0, flip and 1.0 in scales)
    total, count = torch.zeros_like(at_one[0]), 0
    for scale in scales:
        probs = at_one if scale == 1.0 else probs_at(scale, flip)
        total += probs.sum(dim=0)
        count += probs.shape[0]
    return at_one[0].cpu(), (total / count).cpu()


def crf_labels(image: np.ndarray, probs: np.ndarray, params: CRFParams) -> np.ndarray:
    """Dense-CRF label map over background plus the classes the prediction already uses.

    A choice of this project, not of the papers: classes that win no pixel are left out of the CRF,
    which makes it several times cheaper for VOC's 21 classes; the CRF practically never turns
    such a class into a winner.
    """
    candidates = np.union1d([0], np.unique(probs.argmax(axis=0)))
    refined = dense_crf(image, np.ascontiguousarray(probs[candidates]), params)
    return candidates[refined.argmax(axis=0)].astype(np.uint8)


def write_panel(path: Path, image: np.ndarray, pred: np.ndarray, gt: np.ndarray, title: str) -> None:
    fig = new_figure(figsize=(9, 3.4))
    axes = fig.subplots(1, 3)
    for ax, picture, name in zip(axes, (image, colorize(pred), colorize(gt)), ("image", "prediction", "truth")):
        ax.imshow(picture)
        ax.set_title(name)
        ax.axis("off")
    fig.suptitle(title)
    fig.tight_layout()
    save_png(fig, path)


def evaluate(model: nn.Module, index: DatasetIndex, split: str, scales: Sequence[float], flip: bool,
             crf: CRFParams | None, ctx: DistContext, prediction_dir: Path, panel_dir: Path,
             panels: int) -> StreamingEvaluation:
    """Stream the split through the model, scoring every mode and writing PNGs as it goes.

    Multi-scale is scored only when ``scales`` and ``flip`` make it differ from the single pass.
    """
    multi_scale = flip or list(scales) != [1.0]
    modes = [SINGLE] + ([MULTISCALE] if multi_scale else []) + ([MULTISCALE_CRF] if crf else [])
    result = StreamingEvaluation(modes, index.num_classes)
    for i, image_id in enumerate(progress_bar(index.ids(split), desc=f"evaluate {split}")):
        image = load_rgb(index.image_path(image_id))
        gt = read_label(index.mask_path(image_id, split))
        if gt.shape != image.shape[:2]:
            raise InputError(f"{index.mask_path(image_id, split)}: mask size {gt.shape} != image size "
                             f"{image.shape[:2]}")
        single, multi = predict_probs(model, image, scales, flip, ctx)
        predictions = {SINGLE: single.argmax(0).numpy().astype(np.uint8)}
        if multi_scale:
            predictions[MULTISCALE] = multi.argmax(0).numpy().astype(np.uint8)
        if crf:
            predictions[MULTISCALE_CRF] = crf_labels(image, multi.numpy(), crf)
        result.update(gt, predictions)
        final = predictions[modes[-1]]
        write_label(prediction_dir / f"{image_id}.png", final)
        if i < panels:
            write_panel(panel_dir / f"{image_id}.png", image, final, gt, f"{image_id} ({modes[-1]})")
    return result


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--index", type=Path, required=True)
    p.add_argument("--checkpoint", type=Path, required=True, help="final model file of train_seg")
    p.add_argument("--split", required=True)
    p.add_argument("--scales", type=float, nargs="+", required=True)
    p.add_argument("--flip", action=argparse.BooleanOptionalAction, required=True)
    p.add_argument("--crf", action=argparse.BooleanOptionalAction, required=True)
    add_crf_arguments(p, required=False)  # needed with --crf
    p.add_argument("--panels", type=int, required=True, help="inspection panels to draw")
    p.add_argument("--out-metrics", type=Path, required=True)
    p.add_argument("--out-per-class", type=Path, required=True)
    p.add_argument("--out-predictions", type=Path, required=True)
    p.add_argument("--out-panels", type=Path, required=True)
    add_device_arguments(p)
    args = p.parse_args(argv)
    args.crf_params = None
    if args.crf:
        try:
            args.crf_params = crf_params_from(args)
        except ValueError as exc:
            p.error(f"--crf: {exc}")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    index = DatasetIndex.load(args.index)
    with distributed_session(args.device, args.precision, args.channels_last) as ctx:
        model, meta = load_trained_model(args.checkpoint, ctx.device)
        check_meta(args.checkpoint, meta, {"classes": index.classes})
        model = inference_copy(model, ctx)
        with atomic_dir(args.out_predictions) as pred_dir, \
                atomic_dir(args.out_panels) as panel_dir:
            result = evaluate(model, index, args.split, args.scales, args.flip, args.crf_params, ctx,
                              pred_dir, panel_dir, args.panels)
            with atomic_path(args.out_per_class) as tmp:
                result.per_class(index.classes).to_csv(tmp, index=False)
            with atomic_path(args.out_metrics) as tmp:
                result.metrics().to_csv(tmp, index=False)
    summary = ", ".join(f"{r.mode} {r.miou:.4f}" for r in result.metrics().itertuples())
    print(f"{args.split} mIoU over {result.n_images} images: {summary}", file=sys.stderr)


if __name__ == "__main__":
    run_stage(main)
