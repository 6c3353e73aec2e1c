"""Stage: pseudo-label PNGs for a split from a CAM file (threshold, ignore band, dense CRF).

The output directory appears only when every PNG is written; see ``stages.labels.pseudo``.
"""
from __future__ import annotations

import argparse

from stages.cams.threshold import read_best
from stages.data.index import DatasetIndex
from stages.errors import InputError, run_stage
from stages.labels.crf import add_crf_arguments, crf_params_from
from stages.labels.pseudo import PseudoLabelSettings, generate_pseudo_labels
from stages.runtime.progress import progress_bar


def threshold_arg(text: str) -> float | str:
    if text == "auto":
        return text
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"threshold must be a number or 'auto', got {text!r}") from None


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--index", required=True)
    p.add_argument("--cams", required=True, help="HDF5 CAM file (raw or refined)")
    p.add_argument("--split", required=True)
    p.add_argument("--threshold", type=threshold_arg, required=True,
                   help="background score, or 'auto' to take it from --best")
    p.add_argument("--best", help="eval_cam's best-threshold JSON (needed with --threshold auto)")
    p.add_argument("--ignore-band", type=float, required=True, help="0 turns the band off")
    p.add_argument("--use-crf", action=argparse.BooleanOptionalAction, required=True)
    add_crf_arguments(p)
    p.add_argument("--out-dir", required=True, help="directory of <id>.png to create")
    p.add_argument("--workers", type=int, default=1, help="CRF processes")
    return p.parse_args(argv)


def resolve_threshold(threshold: float | str, best: str | None) -> float:
    if threshold != "auto":
        return threshold
    if best is None:
        raise InputError("--threshold auto needs --best (the JSON written by eval_cam)")
    return read_best(best)[0]


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    index = DatasetIndex.load(args.index)
    crf = crf_params_from(args)
    settings = PseudoLabelSettings(threshold=resolve_threshold(args.threshold, args.best),
                                   ignore_band=args.ignore_band, crf=crf if args.use_crf else None,
                                   num_classes=index.num_classes)
    with progress_bar(total=len(index.ids(args.split)), desc=f"pseudo labels {args.split}", unit="img") as bar:
        count = generate_pseudo_labels(index, args.cams, args.split, settings, args.out_dir,
                                       args.workers, on_done=lambda _: bar.update())
    print(f"{count} pseudo labels in {args.out_dir} (threshold {settings.threshold:.3f}, "
          f"band {settings.ignore_band}, CRF {'on' if args.use_crf else 'off'})")


if __name__ == "__main__":
    run_stage(main)
