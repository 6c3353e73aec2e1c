"""Stage: the ground-truth masks of a split written as a label folder (``pseudo_labels: gt``).

A variant that names ``gt`` trains on the masks exactly as on pseudo labels, so any method gets its
supervised reference (RSS's PSL, a segmenter's ceiling at a budget) on a data set with masks. It is
an ORACLE row: the workflow refuses such a variant unless its name says ORACLE.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from stages.data.index import DatasetIndex
from stages.errors import InputError, MissingInputError, run_stage
from stages.io.label_png import IGNORE, label_path, read_label, write_label
from stages.runtime.progress import progress_bar


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--index", required=True)
    p.add_argument("--split", required=True, help="split whose images all have masks (cam.infer.split)")
    p.add_argument("--out-dir", required=True, type=Path, help="directory of <id>.png labels")
    p.add_argument("--no-progress", action="store_true")
    return p.parse_args(argv)


def write_gt_labels(index: DatasetIndex, split: str, out_dir: Path, progress: bool = True) -> int:
    """Copy each mask of ``split`` (checked: indices of the class list or 255) into ``out_dir``."""
    ids = index.ids(split)
    missing = [i for i in ids if not index.mask_path(i, split).is_file()]
    if missing:
        raise MissingInputError(f"pseudo_labels: gt needs a mask for every image of split {split!r}: "
                                f"{len(missing)} missing, e.g. {index.mask_path(missing[0], split)}")
    out_dir.mkdir(parents=True, exist_ok=True)
    for image_id in progress_bar(ids, desc=f"gt labels {split}", unit="img", disable=not progress):
        path = index.mask_path(image_id, split)
        mask = read_label(path)
        bad = np.setdiff1d(np.unique(mask), [*range(index.num_classes), IGNORE])
        if bad.size:
            raise InputError(f"{path}: values {bad.tolist()[:5]} are neither classes 0-{index.num_classes - 1} "
                             f"nor {IGNORE}")
        write_label(label_path(out_dir, image_id), mask)
    return len(ids)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    count = write_gt_labels(DatasetIndex.load(args.index), args.split, args.out_dir, not args.no_progress)
    print(f"{count} ground-truth masks of split {args.split!r} written to {args.out_dir} (ORACLE labels)")


if __name__ == "__main__":
    run_stage(main)
