"""Stage: verify every image, mask and label of a prepared data set; one report for all problems.

    python -m stages.check_dataset --index IN.json --policy stop|skip --report OUT.csv --out-index OUT.json

The report (CSV: id, split, file, problem, severity) is always written. With ``stop``, any
error ends the stage with exit status 1 and no output index; with ``skip``, the images concerned
are dropped from every split of the output index. A split that is (or ends up) empty stops it
either way. Warnings (an EXIF orientation tag, which is ignored) never stop or drop anything:
they are printed and kept in the report.
"""
from __future__ import annotations

import argparse
import sys

from stages.data.checks import ERROR, check_index, drop_images, summarize, write_report
from stages.data.index import DatasetIndex
from stages.errors import InputError, run_stage


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m stages.check_dataset", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--index", required=True, help="the prepared index JSON")
    p.add_argument("--policy", required=True, choices=("stop", "skip"))
    p.add_argument("--report", required=True, help="CSV of problems (header only when none)")
    p.add_argument("--out-index", required=True, help="the checked index JSON")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True,
                   help="progress bar on stderr")
    return p


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    index = DatasetIndex.load(args.index)
    report = check_index(index, progress=args.progress)
    write_report(args.report, report)
    warnings = [p for p in report if p.severity != ERROR]
    if warnings:
        print(f"{len(warnings)} warning(s) in data set {index.name!r}:\n{summarize(warnings)}\n"
              f"full list: {args.report}", file=sys.stderr)
    problems = [p for p in report if p.severity == ERROR]
    if problems and args.policy == "stop":
        raise InputError(f"{len(problems)} problem(s) in data set {index.name!r} ({args.index}); fix the "
                         f"files or set dataset.check.policy: skip; full list: {args.report}\n"
                         f"{summarize(problems)}")
    bad = {p.id for p in problems if p.id}
    checked = drop_images(index, bad)
    empty = [split for split, ids in checked.splits.items() if not ids]
    if empty:
        raise InputError(f"data set {index.name!r}: split(s) {empty} empty after dropping "
                         f"{len(bad)} bad image(s); see {args.report}")
    checked.save(args.out_index)
    if bad:
        print(f"{index.name}: dropped {len(bad)} image(s) with problems, listed in {args.report}",
              file=sys.stderr)


if __name__ == "__main__":
    run_stage(main)
