"""Stage: background-threshold sweep of a CAM file against the ground-truth masks of a split.

Writes mIoU per threshold, per-class IoU at the best threshold, and the best threshold as JSON
(pseudo_labels reads it when its threshold is ``auto``).
"""
from __future__ import annotations

import argparse
import json
from typing import Iterator

import numpy as np
import pandas as pd

from stages.cams.threshold import sweep_thresholds, threshold_grid
from stages.data.index import DatasetIndex
from stages.errors import InputError, run_stage
from stages.io.atomic import atomic_path, write_text
from stages.io.cam_store import CamReader
from stages.io.label_png import read_label
from stages.runtime.progress import progress_bar


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--index", required=True)
    p.add_argument("--cams", required=True, help="HDF5 CAM file")
    p.add_argument("--split", required=True, help="split with ground-truth masks (train)")
    p.add_argument("--threshold-start", type=float, required=True)
    p.add_argument("--threshold-stop", type=float, required=True)
    p.add_argument("--threshold-step", type=float, required=True)
    p.add_argument("--out-sweep", required=True, help="CSV: threshold, miou, pixel_accuracy")
    p.add_argument("--out-per-class", required=True, help="CSV: class, iou at the best threshold")
    p.add_argument("--out-best", required=True, help='JSON {"threshold": t, "miou": m}')
    return p.parse_args(argv)


def masks_and_cams(index: DatasetIndex, reader: CamReader, split: str) -> Iterator[tuple]:
    """(gt, cams, class_indices) per image, read lazily; a size mismatch names the image."""
    for image_id, entry in reader.entries(index.ids(split)):
        gt = read_label(index.mask_path(image_id, split))
        if gt.shape != entry.size:
            raise InputError(f"{reader.path}: CAMs of {image_id!r} are {entry.size}, its mask "
                             f"{index.mask_path(image_id, split)} is {gt.shape}")
        yield gt, entry.cams, entry.class_indices


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    index = DatasetIndex.load(args.index)
    thresholds = threshold_grid(args.threshold_start, args.threshold_stop, args.threshold_step)
    ids = index.ids(args.split)
    with CamReader(args.cams) as reader:
        reader.check_matches(index, ids)
        samples = progress_bar(masks_and_cams(index, reader, args.split), total=len(ids), unit="img",
                       desc=f"sweep {args.split}")
        matrices = sweep_thresholds(samples, thresholds, index.num_classes)
    sweep = pd.DataFrame({"threshold": thresholds, "miou": [m.miou() for m in matrices],
                          "pixel_accuracy": [m.pixel_accuracy() for m in matrices]})
    best = int(np.nanargmax(sweep["miou"].to_numpy()))
    per_class = pd.DataFrame({"class": index.classes, "iou": matrices[best].iou()})
    for path, frame in ((args.out_sweep, sweep), (args.out_per_class, per_class)):
        with atomic_path(path) as tmp:
            frame.to_csv(tmp, index=False, float_format="%.6f")
    result = {"threshold": float(thresholds[best]), "miou": float(sweep["miou"][best])}
    write_text(args.out_best, json.dumps(result, indent=1) + "\n")
    print(f"best background threshold {result['threshold']:.2f}: mIoU {result['miou']:.4f} "
          f"({len(ids)} images of {args.split})")


if __name__ == "__main__":
    run_stage(main)
