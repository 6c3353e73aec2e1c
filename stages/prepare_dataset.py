"""Stage: make the data set's index (and, for toy, voc and coco, the data set or its masks).

    python -m stages.prepare_dataset --kind toy --index OUT.json --root DIR --num-classes N ...
    python -m stages.prepare_dataset --kind voc --index OUT.json --root DIR --download-dir DIR ...
    python -m stages.prepare_dataset --kind folder --index OUT.json --path DIR --labels auto
    python -m stages.prepare_dataset --kind coco --index OUT.json --root DIR --download-dir DIR ... [--path COCO]

Each kind needs its own flags (see --help); a missing one is an error naming it.
"""
from __future__ import annotations

import argparse
import json
import sys

from stages.data.coco import prepare_coco
from stages.data.toy import generate_toy
from stages.data.voc_folder import LABEL_SOURCES, prepare_voc, read_voc_folder
from stages.errors import run_stage

KIND_FLAGS = {
    "toy": ("root", "num_classes", "num_train_aug", "num_train", "num_val", "min_size", "max_size", "seed"),
    "voc": ("root", "download_dir", "retries", "archives"),
    "folder": ("path", "labels"),
    "coco": ("root", "download_dir", "retries", "archives"),
}


def _archives(text: str) -> dict:
    try:
        archives = json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"--archives is not JSON ({exc})") from exc
    if not isinstance(archives, dict) or not all(
            isinstance(v, dict) and isinstance(v.get("url"), str) for v in archives.values()):
        raise argparse.ArgumentTypeError('--archives must map names to {"url": ..., "md5": ...|null}')
    return archives


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m stages.prepare_dataset", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--kind", required=True, choices=sorted(KIND_FLAGS))
    p.add_argument("--index", required=True, help="where to write the index JSON")
    p.add_argument("--root", help="toy: folder to generate into; voc, coco: folder to extract (coco: and "
                                  "index) into")
    toy = p.add_argument_group("toy")
    toy.add_argument("--num-classes", type=int, help="object classes (background is added)")
    toy.add_argument("--num-train-aug", type=int)
    toy.add_argument("--num-train", type=int, help="first N of train_aug, for CAM evaluation")
    toy.add_argument("--num-val", type=int)
    toy.add_argument("--min-size", type=int, help="smallest image side (px)")
    toy.add_argument("--max-size", type=int, help="largest image side (px)")
    toy.add_argument("--seed", type=int)
    toy.add_argument("--workers", type=int, default=1, help="processes that draw the images")
    voc = p.add_argument_group("voc")
    voc.add_argument("--devkit", help="an existing VOCdevkit/VOC2012: read in place, no download")
    voc.add_argument("--download-dir", help="where archives are downloaded (and looked for)")
    voc.add_argument("--retries", type=int, help="extra attempts per download")
    voc.add_argument("--archives", type=_archives, help='JSON: {"name": {"url": ..., "md5": ...|null}}')
    folder = p.add_argument_group("folder")
    folder.add_argument("--path", help="a VOC-format folder, read in place (coco: an existing COCO 2014 "
                                       "folder, read in place, nothing downloaded)")
    folder.add_argument("--labels", choices=LABEL_SOURCES, help="where image-level labels come from")
    folder.add_argument("--follow-symlinks-outside", action=argparse.BooleanOptionalAction, default=False,
                        help="read files of the data set (lists, labels, annotations, images, masks, "
                             "scribbles) that are symbolic links leading outside its folder (also for "
                             "--kind voc and coco; refused by default)")
    coco = p.add_argument_group("coco", "also --download-dir, --retries and --archives as for voc, and --path")
    coco.add_argument("--max-train-aug", type=int, help="keep the first N train2014 images (default: all)")
    coco.add_argument("--max-train", type=int, help="train, for CAM evaluation: the first N of train_aug "
                                                   "(default: all)")
    coco.add_argument("--max-val", type=int, help="keep the first N val2014 images (default: all)")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True,
                   help="progress bars on stderr")
    return p


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    missing = [f"--{name.replace('_', '-')}" for name in KIND_FLAGS[args.kind] if getattr(args, name) is None]
    if missing:
        parser.error(f"--kind {args.kind} needs {' '.join(missing)}")
    if args.kind == "toy":
        index = generate_toy(args.root, num_classes=args.num_classes, num_train_aug=args.num_train_aug,
                             num_train=args.num_train, num_val=args.num_val, min_size=args.min_size,
                             max_size=args.max_size, seed=args.seed, progress=args.progress,
                             workers=args.workers)
    elif args.kind == "voc":
        index = prepare_voc(args.root, args.download_dir, args.archives, args.retries,
                            devkit=args.devkit, progress=args.progress,
                            follow_symlinks_outside=args.follow_symlinks_outside)
    elif args.kind == "coco":
        index = prepare_coco(args.root, args.path, args.download_dir, args.archives, args.retries,
                             max_train_aug=args.max_train_aug, max_train=args.max_train, max_val=args.max_val,
                             progress=args.progress, follow_symlinks_outside=args.follow_symlinks_outside)
    else:
        index = read_voc_folder(args.path, args.labels, progress=args.progress,
                                follow_symlinks_outside=args.follow_symlinks_outside)
    index.save(args.index)
    sizes = ", ".join(f"{split} {len(ids)}" for split, ids in index.splits.items())
    print(f"{index.name}: {index.num_classes} classes, {sizes}; index written to {args.index}",
          file=sys.stderr)


if __name__ == "__main__":
    run_stage(main)
