"""Stage: quality of pseudo labels against the ground-truth masks of a split.

Two mIoUs, because a pseudo label may abstain (255):

- ``miou``: the field's figure (IRN's evaluation), an ignored pixel counted as background; what
  papers report and what to compare with them;
- ``miou_labelled``: labelled pixels only (255 skipped). It rises when a label abstains on hard
  pixels, so it is read together with ``coverage``, the share of valid ground-truth pixels that
  received a label. ``precision`` (pixel accuracy) counts labelled pixels only too.

``fg_ratio``, ``false_fg``, ``missed_fg`` and ``wrong_class`` say where the errors fall (ignored
pixels as background, as in ``miou``): labels that cover too much foreground teach a segmenter to
spread, which more training does not undo (docs/real-images.md).
"""
from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from stages.data.index import DatasetIndex
from stages.errors import InputError, MissingInputError, run_stage
from stages.io.atomic import atomic_path
from stages.io.label_png import read_label
from stages.metrics.confusion import ConfusionMatrix
from stages.runtime.progress import progress_bar


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--index", required=True)
    p.add_argument("--labels", required=True, help="directory of <id>.png pseudo labels")
    p.add_argument("--split", required=True, help="split with ground-truth masks (train)")
    p.add_argument("--out-summary", required=True,
                   help="CSV: miou, miou_labelled, precision, coverage, fg_ratio, false_fg, missed_fg, "
                        "wrong_class, n_images")
    p.add_argument("--out-per-class", required=True, help="CSV: class, iou, iou_labelled")
    return p.parse_args(argv)


def score_labels(index: DatasetIndex, labels_dir: Path, split: str) -> ConfusionMatrix:
    ids = index.ids(split)
    missing = [i for i in ids if not (labels_dir / f"{i}.png").is_file()]
    if missing:
        raise MissingInputError(f"{labels_dir}: {len(missing)} pseudo label(s) of split {split!r} "
                                f"missing, e.g. {missing[:5]}")
    matrix = ConfusionMatrix(index.num_classes)
    for image_id in progress_bar(ids, desc=f"score {split}", unit="img"):
        label_path, mask_path = labels_dir / f"{image_id}.png", index.mask_path(image_id, split)
        label, gt = read_label(label_path), read_label(mask_path)
        if label.shape != gt.shape:
            raise InputError(f"{label_path}: size {label.shape} differs from mask {mask_path} {gt.shape}")
        matrix.update(gt, label)
    return matrix


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    index = DatasetIndex.load(args.index)
    matrix = score_labels(index, Path(args.labels), args.split)
    as_background = matrix.ignored_as(0)
    summary = pd.DataFrame([{"miou": as_background.miou(), "miou_labelled": matrix.miou(),
                             "precision": matrix.pixel_accuracy(), "coverage": matrix.coverage(),
                             **as_background.error_shares(), "n_images": len(index.ids(args.split))}])
    per_class = pd.DataFrame({"class": index.classes, "iou": as_background.iou(),
                              "iou_labelled": matrix.iou()})
    for path, frame in ((args.out_summary, summary), (args.out_per_class, per_class)):
        with atomic_path(path) as tmp:
            frame.to_csv(tmp, index=False, float_format="%.6f")
    row = summary.iloc[0]
    print(f"pseudo labels {args.labels}: mIoU {row.miou:.4f} (ignored = background), "
          f"mIoU of labelled pixels {row.miou_labelled:.4f}, precision {row.precision:.4f}, "
          f"coverage {row.coverage:.4f}, foreground {row.fg_ratio:.2f}x the true")


if __name__ == "__main__":
    run_stage(main)
