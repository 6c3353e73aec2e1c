"""A segmenter = a timm features backbone + a decoder chosen by name (``stages.models.decoders``).

The output is per-pixel logits at the input's resolution (background is class 0). Its backbone
can start from the CAM network's (trained on the same images) or the whole model from another
segmenter file (a cold start, e.g. RSS from a trained ``ce`` variant).
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from stages.errors import InputError
from stages.io.checkpoint import load_checkpoint
from stages.models.backbones import create_backbone
from stages.models.cam_net import load_cam_net
from stages.models.decoders import DECODER_CHANNELS, create_decoder


@dataclass(frozen=True)
class SegmenterSpec:
    """What defines a segmenter's architecture (and, through ``weights``, its initial backbone)."""

    backbone: str
    decoder: str
    num_classes: int  # including background
    weights: str = "none"
    decoder_width: int = DECODER_CHANNELS


class Segmenter(nn.Module):
    def __init__(self, spec: SegmenterSpec) -> None:
        super().__init__()
        self.spec = spec
        self.backbone = create_backbone(spec.backbone, spec.weights)
        info = self.backbone.feature_info
        self.decoder = create_decoder(spec.decoder, info.channels(), info.reduction(), spec.num_classes,
                                      spec.decoder_width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.decoder(self.backbone(x))
        return F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)

    def param_groups(self, head_lr_mult: float) -> list[dict]:
        """The backbone at the base learning rate, the freshly initialised decoder faster."""
        return [{"params": list(self.backbone.parameters())},
                {"params": list(self.decoder.parameters()), "lr_mult": head_lr_mult}]


def init_backbone_from_cam(backbone: nn.Module, backbone_name: str, cam_path: str | os.PathLike) -> None:
    """Start a segmenter's backbone from the CAM network's, which was trained on the same images.

    Only a backbone of the same name can take the weights; anything else is refused rather
    than partially copied.
    """
    cam_net, meta = load_cam_net(cam_path, "cpu")
    if meta.get("backbone") != backbone_name:
        raise InputError(f"{cam_path}: CAM network backbone is {meta.get('backbone')!r}, "
                         f"the segmenter's is {backbone_name!r}; they must match to copy weights")
    backbone.load_state_dict(cam_net.backbone.state_dict())


def init_from_segmenter(model: nn.Module, path: str | os.PathLike) -> dict:
    """Start ``model`` from a trained segmenter file (train_seg's ``model.pt``); returns its meta.

    Every weight must fit: a cold start from another architecture is refused, naming the file.
    """
    state = load_checkpoint(path)
    if "model" not in state or "method" not in state.get("meta", {}):
        raise InputError(f"{path}: not a trained segmenter file (train_seg's model.pt)")
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as exc:
        meta = state["meta"]
        raise InputError(f"{path}: a {meta.get('backbone')}/{meta.get('decoder')} "
                         f"(width {meta.get('decoder_width', DECODER_CHANNELS)}) {meta.get('method')} model "
                         f"does not fit this one: {str(exc).splitlines()[0]}") from exc
    return state["meta"]
