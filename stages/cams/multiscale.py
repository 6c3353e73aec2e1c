"""Multi-scale, flipped CAM inference for whole images, streamed into a CAM store.

Per image: raw CAMs at every scale (and of the mirrored image, mirrored back) are resized to the
image size and summed; then ReLU, then each class map is divided by its maximum. Only the classes
the image-level labels list are kept.
"""
from __future__ import annotations

import json
import os
from collections import defaultdict
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from stages.data.images import load_rgb, to_tensor
from stages.data.index import DatasetIndex
from stages.io.cam_store import CamFileMeta, CamWriter, merge_shards, shard_path
from stages.runtime.distributed import DistContext, autocast, barrier
from stages.runtime.progress import progress_bar

_NORM_EPS = 1e-5


class ImagesById(Dataset):
    """Whole images (normalised tensors) in id order, so DataLoader workers can decode ahead."""

    def __init__(self, index: DatasetIndex, ids: Sequence[str]) -> None:
        self.index = index
        self.ids = list(ids)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> tuple[str, torch.Tensor]:
        image_id = self.ids[i]
        return image_id, to_tensor(load_rgb(self.index.image_path(image_id)))


def same_size_batches(items: Iterable[tuple[str, torch.Tensor]], batch_size: int,
                      max_pending: int | None = None) -> Iterator[tuple[list[str], torch.Tensor]]:
    """Group a stream of images into batches of equal size, holding at most ``max_pending``.

    Padding to a common size would make an image's CAMs depend on its batch mates; grouping
    keeps results independent of the batch size. When too many sizes are pending, the fullest
    group goes out short.
    """
    max_pending = max_pending or 4 * batch_size
    pending: dict[tuple[int, ...], list[tuple[str, torch.Tensor]]] = defaultdict(list)
    count = 0
    for image_id, image in items:
        group = pending[tuple(image.shape)]
        group.append((image_id, image))
        count += 1
        if len(group) < batch_size and count < max_pending:
            continue
        key = tuple(image.shape) if len(group) >= batch_size else max(pending, key=lambda k: len(pending[k]))
        out = pending.pop(key)
        count -= len(out)
        yield [i for i, _ in out], torch.stack([t for _, t in out])
    for out in pending.values():
        yield [i for i, _ in out], torch.stack([t for _, t in out])


def multiscale_cams(net: torch.nn.Module, images: torch.Tensor, scales: Sequence[float],
                    flip: bool) -> torch.Tensor:
    """Sum of raw CAMs over scales (and flips) at the input size: (B, C, H, W) float32."""
    b, _, h, w = images.shape
    total = None
    for s in scales:
        x = images if s == 1 else F.interpolate(
            images, size=(max(1, round(h * s)), max(1, round(w * s))), mode="bilinear", align_corners=False)
        if flip:
            x = torch.cat([x, x.flip(-1)])
        maps = F.interpolate(net.cams(x).float(), size=(h, w), mode="bilinear", align_corners=False)
        if flip:
            maps = maps[:b] + maps[b:].flip(-1)
        total = maps if total is None else total + maps
    return total


def normalise_cams(cams: torch.Tensor) -> torch.Tensor:
    """ReLU, then each map divided by its own maximum (an all-zero map stays zero)."""
    cams = cams.relu()
    return cams / (cams.amax(dim=(-2, -1), keepdim=True) + _NORM_EPS)


@torch.inference_mode()
def write_cams(net: torch.nn.Module, index: DatasetIndex, ids: Sequence[str], writer: CamWriter,
               scales: Sequence[float], flip: bool, batch_size: int, ctx: DistContext,
               workers: int = 0, on_batch: Callable[[int], None] | None = None) -> None:
    """CAMs of the present classes of every image in ``ids``, each written as soon as it is done."""
    loader = DataLoader(ImagesById(index, ids), batch_size=None, num_workers=workers)
    for batch_ids, images in same_size_batches(loader, batch_size):
        images = images.to(ctx.device, non_blocking=True)
        if ctx.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        with autocast(ctx):
            cams = multiscale_cams(net, images, scales, flip)
        for image_id, image_cams in zip(batch_ids, cams):
            present = np.asarray(index.labels[image_id], dtype=np.int64)
            kept = normalise_cams(image_cams[torch.as_tensor(present - 1, device=image_cams.device)])
            writer.write(image_id, kept.cpu().numpy(), present)
        if on_batch is not None:
            on_batch(len(batch_ids))


def network_cam_meta(index: DatasetIndex, split: str, net_meta: dict[str, Any], checkpoint_sha256: str,
                     scales: Sequence[float], flip: bool) -> CamFileMeta:
    """What a CAM file of ``split`` made by a CAM network file (its meta and hash) says of itself."""
    refinement = net_meta.get("refinement")
    return CamFileMeta(dataset=index.name, split=split, classes=tuple(index.classes), backbone=net_meta["backbone"],
                       scales=tuple(scales), flip=flip, checkpoint_sha256=checkpoint_sha256,
                       refinement=json.dumps(refinement, sort_keys=True) if refinement is not None else "")


def infer_to_file(net: torch.nn.Module, index: DatasetIndex, ids: Sequence[str], out: str | os.PathLike,
                  meta: CamFileMeta, scales: Sequence[float], flip: bool, batch_size: int, ctx: DistContext,
                  workers: int = 0) -> None:
    """The CAM file ``out`` of ``ids``, complete (or absent) when any process returns.

    Under DDP every rank writes a shard of the ids and rank 0 merges them.
    """
    my_ids = list(ids)[ctx.rank::ctx.world_size]
    target = shard_path(out, ctx.rank) if ctx.distributed else out
    with progress_bar(total=len(my_ids), desc=f"CAMs {meta.split}", unit="img", disable=not ctx.is_main) as bar, \
            CamWriter(target, meta) as writer:
        write_cams(net, index, my_ids, writer, scales, flip, batch_size, ctx, workers=workers, on_batch=bar.update)
    barrier(ctx)
    if ctx.distributed and ctx.is_main:
        merge_shards([shard_path(out, r) for r in range(ctx.world_size)], out, meta)
    barrier(ctx)
