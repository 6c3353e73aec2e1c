"""Stage: multi-scale + flip CAMs of a split's present classes, into one HDF5 CAM file.

Under ``torchrun`` every rank writes a shard of the ids and rank 0 merges them; the output name
appears only when the merged file is complete. The HDF5 layout is described in
``stages.io.cam_store``.
"""
from __future__ import annotations

import argparse

from stages.cams.multiscale import infer_to_file, network_cam_meta
from stages.data.index import DatasetIndex
from stages.errors import MissingEntryError, run_stage
from stages.io.checkpoint import check_meta, file_sha256
from stages.models.cam_net import load_cam_net
from stages.runtime.distributed import add_device_arguments, distributed_session


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--index", required=True, help="data set index JSON")
    p.add_argument("--checkpoint", required=True, help="CAM network file written by train_cam")
    p.add_argument("--split", required=True)
    p.add_argument("--scales", type=float, nargs="+", required=True)
    p.add_argument("--flip", action=argparse.BooleanOptionalAction, required=True)
    p.add_argument("--out", required=True, help="HDF5 CAM file to write")
    add_device_arguments(p)
    p.add_argument("--batch-size", type=int, default=8, help="images per forward pass (per process)")
    p.add_argument("--workers", type=int, default=0, help="image decoding processes")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    index = DatasetIndex.load(args.index)
    ids = index.ids(args.split)
    unlabelled = [i for i in ids if i not in index.labels]
    if unlabelled:
        raise MissingEntryError(f"{args.index}: {len(unlabelled)} id(s) of split {args.split!r} have no "
                       f"image-level labels, e.g. {unlabelled[:5]}")
    with distributed_session(args.device, args.precision, args.channels_last) as ctx:
        net, meta = load_cam_net(args.checkpoint, ctx.device)
        check_meta(args.checkpoint, meta, {"dataset": index.name, "classes": list(index.classes)})
        file_meta = network_cam_meta(index, args.split, meta, file_sha256(args.checkpoint), args.scales, args.flip)
        infer_to_file(net, index, ids, args.out, file_meta, args.scales, args.flip, args.batch_size, ctx,
                      workers=args.workers)


if __name__ == "__main__":
    run_stage(main)
