"""Stage: the scribbles of one source for a split, as palette PNGs (class on strokes, 255 elsewhere).

Sources (``stages.data.scribble_sources``): ``dataset`` (the data set's own), ``synthetic`` (from
the split's masks), ``pseudo`` (from a folder of pseudo labels, given with --pseudo-labels). The
output directory appears only when every PNG is written.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from stages.data.index import DatasetIndex
from stages.data.scribble_sources import SOURCES, StrokeSettings, write_scribble_source
from stages.errors import run_stage
from stages.runtime.progress import progress_bar


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--index", required=True, type=Path)
    p.add_argument("--split", required=True)
    p.add_argument("--source", required=True, choices=SOURCES)
    p.add_argument("--pseudo-labels", type=Path, help="pseudo-label folder (source pseudo)")
    p.add_argument("--seed", type=int, required=True)
    p.add_argument("--background-strokes", type=int, required=True, help="curves drawn in the background")
    p.add_argument("--min-area", type=int, required=True, help="objects smaller than this (px) get no stroke")
    p.add_argument("--out-dir", required=True, type=Path, help="directory of <id>.png to create")
    args = p.parse_args(argv)
    if (args.source == "pseudo") != (args.pseudo_labels is not None):
        p.error("--pseudo-labels goes with --source pseudo, and only with it")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    index = DatasetIndex.load(args.index)
    settings = StrokeSettings(args.seed, args.background_strokes, args.min_area)
    with progress_bar(total=len(index.ids(args.split)), desc=f"scribbles {args.source}", unit="img") as bar:
        counts = write_scribble_source(index, args.split, args.source, args.out_dir, args.pseudo_labels,
                                       settings, on_done=lambda _: bar.update())
    print(f"{counts['images']} scribble maps ({args.source}, {args.split}) in {args.out_dir}: "
          f"{100 * counts['labelled_fraction']:.2f}% of pixels labelled, "
          f"{counts['without_strokes']} image(s) without strokes")


if __name__ == "__main__":
    run_stage(main)
