"""Stage: a CAM file's entries as plain per-image arrays, for tools that read ``.npy`` files.

``<out-dir>/<id>.npy`` is H x W x (C - 1), channel c - 1 for foreground class c (0 where the image
has no CAM), saved without pickle; ``classes.txt`` names the channels one a line. That is the
``array`` import format, so ``import_cams --format array`` reads the folder back. The folder
appears only once every file is written.
"""
from __future__ import annotations

import argparse

import numpy as np

from stages.cams.foreign import CLASSES_FILE, channels_last
from stages.errors import run_stage
from stages.io.atomic import atomic_dir
from stages.io.cam_store import CamReader
from stages.io.ids import check_id
from stages.runtime.progress import progress_bar


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cams", required=True, help="HDF5 CAM file (infer_cam, refine or import_cams)")
    p.add_argument("--out-dir", required=True, help="folder of <id>.npy to create")
    p.add_argument("--dtype", choices=["float16", "float32"], default="float16",
                   help="float16 keeps the CAM file's 1/255 steps apart (a round trip is exact) at half the size")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    with CamReader(args.cams) as reader, atomic_dir(args.out_dir) as tmp, \
            progress_bar(total=len(reader), desc="export CAMs", unit="img") as bar:
        classes = reader.meta.classes
        (tmp / CLASSES_FILE).write_text("".join(f"{c}\n" for c in classes[1:]))
        for image_id, entry in reader.entries():
            path = tmp / f"{check_id(image_id, str(args.cams))}.npy"
            np.save(path, channels_last(entry, len(classes), args.dtype), allow_pickle=False)
            bar.update()
        count = len(reader)
    print(f"{count} CAM arrays ({args.dtype}, H x W x {len(classes) - 1}) in {args.out_dir}")


if __name__ == "__main__":
    run_stage(main)
