"""The walk over a split: embeddings of each whole image, affinities, the walk of its source CAMs,
streamed into a CAM file.

One image at a time at its own size and a single scale, as AffinityNet and IRN infer
affinities (no flip, no multi-scale); images without a foreground class are written empty
without running the network.
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch.utils.data import DataLoader

from stages.cams.multiscale import ImagesById
from stages.data.index import DatasetIndex
from stages.errors import InputError
from stages.io.cam_store import CamReader, CamWriter
from stages.irn.net import AffinityNet, pair_affinities
from stages.irn.pairs import half_offsets
from stages.irn.walk import WalkSettings, walk_cams
from stages.runtime.distributed import DistContext, autocast, inference_copy


@torch.inference_mode()
def write_refined_cams(net: AffinityNet, radius: int, index: DatasetIndex, ids: Sequence[str], source: CamReader,
                       writer: CamWriter, settings: WalkSettings, ctx: DistContext, workers: int = 0,
                       on_image: Callable[[], None] | None = None) -> None:
    """Walk the source CAMs of every image in ``ids``; each is written as soon as it is done."""
    offsets = half_offsets(radius)
    net = inference_copy(net, ctx)
    for image_id, image in DataLoader(ImagesById(index, ids), batch_size=None, num_workers=workers):
        entry = source.read(image_id)
        if entry.size != tuple(image.shape[-2:]):
            raise InputError(f"{source.path}: CAMs of {image_id!r} are {entry.size[1]}x{entry.size[0]}, "
                             f"the image is {image.shape[-1]}x{image.shape[-2]}")
        cams = torch.from_numpy(entry.cams)
        if len(cams):
            with autocast(ctx):
                embeddings = net(ctx.images(image[None])).float()
            affinity = pair_affinities(embeddings, offsets)[0]
            cams = walk_cams(cams.to(ctx.device), affinity, offsets, settings).cpu()
        writer.write(image_id, cams.numpy(), entry.class_indices)
        if on_image is not None:
            on_image()
