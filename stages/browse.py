"""Stage: the results browser, results/browse/index.html (stages/reporting/browser.py).

One row per image of the CAM evaluation split (its CAMs and every refinement's pseudo labels) and
of the evaluation split (every variant's predictions), each with the ground truth and per-image
IoU; opens from disk in any browser.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from stages.data.index import DatasetIndex
from stages.errors import InputError, run_stage
from stages.io.atomic import atomic_dir
from stages.io.named_args import named_paths
from stages.reporting.browser import CamSource, LabelSource, build_browser


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--index", required=True)
    p.add_argument("--cams", type=Path, help="CAM file of the train rows (the raw CAMs)")
    p.add_argument("--best", type=Path, help="eval_cam's best.json of that file: the CAM column's threshold")
    p.add_argument("--train-split", required=True, help="rows with CAMs and pseudo labels (cam.eval.split)")
    p.add_argument("--val-split", required=True, help="rows with predictions (evaluation.split)")
    p.add_argument("--pseudo-labels", nargs="*", default=[], metavar="NAME=DIR",
                   help="pseudo-label folder of each refinement (all of the train split's ids)")
    p.add_argument("--predictions", nargs="*", default=[], metavar="NAME=DIR",
                   help="prediction folder of each variant (all of the val split's ids)")
    p.add_argument("--max-images", type=int, default=200, help="rows per split: its first N images")
    p.add_argument("--thumb-size", type=int, default=96, help="longest side of a thumbnail (px)")
    p.add_argument("--view-size", type=int, default=480, help="longest side of the large view (px)")
    p.add_argument("--workers", type=int, default=1, help="processes drawing the rows")
    p.add_argument("--out-dir", type=Path, required=True)
    p.add_argument("--no-progress", action="store_true")
    return p.parse_args(argv)


def best_threshold(path: Path) -> float:
    try:
        return float(json.loads(path.read_text())["threshold"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise InputError(f"{path}: not an eval_cam best-threshold JSON ({exc})") from exc


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    index = DatasetIndex.load(args.index)
    cams = None
    if args.cams is not None:
        if args.best is None:
            raise InputError("--cams needs --best, the threshold its labels are cut at")
        cams = CamSource(args.cams, best_threshold(args.best), args.train_split)
    labels = [LabelSource(f"pseudo_{name}", f"pseudo labels: {name}", args.train_split, folder, abstains=True)
              for name, folder in named_paths(args.pseudo_labels, "--pseudo-labels").items()]
    labels += [LabelSource(f"pred_{name}", f"prediction: {name}", args.val_split, folder)
               for name, folder in named_paths(args.predictions, "--predictions").items()]
    with atomic_dir(args.out_dir) as tmp:
        counts = build_browser(index, tmp, cams=cams, labels=labels, val_split=args.val_split,
                               max_images=args.max_images, thumb_size=args.thumb_size, view_size=args.view_size,
                               progress=not args.no_progress, workers=args.workers)
    print(f"browser {args.out_dir / 'index.html'}: {counts['rows']} rows, {counts['pictures']} pictures")


if __name__ == "__main__":
    run_stage(main)
