"""Multi-scale, flipped CAM inference for whole images, streamed into a CAM store.

Per image: at every scale the image is resized and padded to its canvas (``stages.data.canvas``);
its raw CAMs (and those of the mirrored canvas, mirrored back) are cropped to the scaled image,
resized to the image size and summed; then ReLU, then each class map is divided by its maximum.
Only the classes the image-level labels list are kept.
"""
from __future__ import annotations

import json
import os
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from stages.data.canvas import SIZE_DIVISOR, grouped_batches, pad_to, padded_size
from stages.data.images import load_rgb
from stages.data.index import DatasetIndex
from stages.data.tensors import to_tensor
from stages.io.cam_store import CamFileMeta, CamWriter, merge_shards, shard_path
from stages.runtime.distributed import DistContext, autocast, barrier, inference_copy
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


def scaled_size(size: tuple[int, int], scale: float) -> tuple[int, int]:
    return max(1, round(size[0] * scale)), max(1, round(size[1] * scale))


def canvas_key(image: torch.Tensor, scales: Sequence[float], divisor: int) -> tuple[tuple[int, int], ...]:
    """The padded canvas of an image at every scale: images with equal keys share passes."""
    size = tuple(image.shape[-2:])
    return tuple(padded_size(scaled_size(size, s), divisor) for s in scales)


def multiscale_cams(net: torch.nn.Module, images: Sequence[torch.Tensor], scales: Sequence[float],
                    flip: bool, channels_last: bool = False, size_divisor: int = SIZE_DIVISOR,
                    keep: Sequence[torch.Tensor] | None = None) -> list[torch.Tensor]:
    """Per image (C, h, w) float32 at its own size: the sum of raw CAMs over scales (and flips).

    ``images`` (each (3, h, w)) must share their ``canvas_key``; an image's CAMs depend on the
    image alone, never on its batch mates or the batch size. ``size_divisor`` 1: no padding.
    ``keep``: per image, the class channels to return (its present classes), chosen before the
    maps are brought to image size, which is most of the work after the network on 20 classes.
    """
    sizes = [tuple(image.shape[-2:]) for image in images]
    totals: list[torch.Tensor | None] = [None] * len(images)
    for s in scales:
        scaled = [image[None] if s == 1 else F.interpolate(
            image[None], size=scaled_size(size, s), mode="bilinear", align_corners=False)
            for image, size in zip(images, sizes)]
        canvas = padded_size(tuple(scaled[0].shape[-2:]), size_divisor)
        x = torch.cat([pad_to(t, canvas) for t in scaled])
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        if flip:
            x = torch.cat([x, x.flip(-1)])
        raw = net.cams(x).float()
        if flip:  # bilinear upsampling commutes with the mirror, so the two views add up here
            raw = raw[:len(images)] + raw[len(images):].flip(-1)
        for i, (t, size) in enumerate(zip(scaled, sizes)):
            own = raw[i:i + 1] if keep is None else raw[i:i + 1, keep[i]]
            if not own.shape[1]:  # no class to keep (interpolate refuses empty maps)
                totals[i] = own.new_zeros((0, *size))
                continue
            own = F.interpolate(own, size=canvas, mode="bilinear", align_corners=False)[..., :t.shape[-2], :t.shape[-1]]
            if own.shape[-2:] != size:
                own = F.interpolate(own, size=size, mode="bilinear", align_corners=False)
            totals[i] = own[0] if totals[i] is None else totals[i] + own[0]
    return totals


def normalise_cams(cams: torch.Tensor) -> torch.Tensor:
    """ReLU, then each map divided by its own maximum (an all-zero map stays zero)."""
    cams = cams.relu()
    return cams / (cams.amax(dim=(-2, -1), keepdim=True) + _NORM_EPS)


def write_cams(net: torch.nn.Module, index: DatasetIndex, ids: Sequence[str], writer: CamWriter,
               scales: Sequence[float], flip: bool, batch_size: int, ctx: DistContext,
               workers: int = 0, on_batch: Callable[[int], None] | None = None,
               size_divisor: int = SIZE_DIVISOR) -> None:
    """CAMs of the present classes of every image in ``ids``, each written as soon as it is done."""
    loader = DataLoader(ImagesById(index, ids), batch_size=None, num_workers=workers)
    # channels-last as the images (16% faster here than mixed layouts), bf16 weights cast once
    # (benchmarks/inference_copy.py: 0.81x autocast's time at 8 images a pass)
    net = inference_copy(net, ctx)
    with torch.inference_mode():
        batches = grouped_batches(loader, batch_size, key=lambda image: canvas_key(image, scales, size_divisor))
        for batch_ids, images in batches:
            images = [image.to(ctx.device, non_blocking=True) for image in images]
            present = [np.asarray(index.labels[image_id], dtype=np.int64) for image_id in batch_ids]
            keep = [torch.as_tensor(classes - 1, device=ctx.device) for classes in present]
            with autocast(ctx):
                cams = multiscale_cams(net, images, scales, flip, ctx.channels_last, size_divisor, keep)
            for image_id, image_cams, classes in zip(batch_ids, cams, present):
                writer.write(image_id, normalise_cams(image_cams).cpu().numpy(), classes)
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
