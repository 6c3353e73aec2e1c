"""Stage: CAMs another method wrote (IRN, SEAM, per-class PNGs, arrays) into one HDF5 CAM file.

The file is the one infer_cam writes (``stages.io.cam_store``), so eval_cam, pseudo labels and
every variant read it unchanged. Its ``source`` attribute records the format and folder; what made
the CAMs is what the user states (``--backbone``, ``--made-by``). Formats and checks:
``stages.cams.foreign``.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from stages.cams.foreign import FORMATS, NUMBERINGS, MapSettings, import_split, open_reader
from stages.data.index import DatasetIndex
from stages.errors import run_stage
from stages.io.cam_store import CamFileMeta, CamWriter
from stages.runtime.progress import progress_bar


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--index", required=True, help="data set index JSON")
    p.add_argument("--split", required=True, help="every image of this split must have CAMs")
    p.add_argument("--path", required=True, help="folder of the CAMs to import")
    p.add_argument("--format", required=True, choices=FORMATS)
    p.add_argument("--class-numbering", required=True, choices=NUMBERINGS,
                   help="class numbers in the files: foreground (0 = first foreground class, as IRN and "
                        "SEAM write them) or dataset (0 = background)")
    p.add_argument("--classes", nargs="+",
                   help="format array: the class of each channel, in order (default: PATH/classes.txt)")
    p.add_argument("--normalize", action=argparse.BooleanOptionalAction, required=True,
                   help="divide each map by its maximum (else maps must lie in 0..1)")
    p.add_argument("--resize", action=argparse.BooleanOptionalAction, required=True,
                   help="resize maps to their image (bilinear; else sizes must match)")
    p.add_argument("--backbone", required=True, help="what made the CAMs, as you state it")
    p.add_argument("--made-by", default="", help="free-text provenance (method, checkpoint, ...)")
    p.add_argument("--out", required=True, help="HDF5 CAM file to write")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    index = DatasetIndex.load(args.index)
    reader = open_reader(args.format, args.path, index.classes, args.class_numbering, args.classes)
    folder = str(Path(args.path).resolve())
    meta = CamFileMeta(
        dataset=index.name, split=args.split, classes=tuple(index.classes), backbone=args.backbone,
        scales=(), flip=False, checkpoint_sha256="", source=f"import_cams:{args.format}:{folder}",
        refinement=json.dumps({"method": "imported", "format": args.format, "path": folder,
                               "made_by": args.made_by}, sort_keys=True))
    settings = MapSettings(normalize=args.normalize, resize=args.resize)
    ids = index.ids(args.split)
    with progress_bar(total=len(ids), desc=f"import {args.format}", unit="img") as bar, \
            CamWriter(args.out, meta) as writer:
        dropped = import_split(index, args.split, reader, settings, writer, on_image=lambda _: bar.update())
    print(f"{len(ids)} images of split {args.split!r} imported from {folder} ({args.format}) into {args.out}; "
          f"{dropped} map(s) of background or unlabelled classes dropped")


if __name__ == "__main__":
    run_stage(main)
