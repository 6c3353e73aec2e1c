"""The CAM network: a backbone, a bias-free 1x1 classifier, and global pooling of the class maps.

Logits are the pooled class maps themselves, so the maps that ``cams`` returns are exactly what
the multi-label loss shaped during training (for ``gap`` this equals classifying the pooled
features; ``gmp`` pools the maps by their maximum).
"""
from __future__ import annotations

import os
from typing import Any

import torch
from torch import nn

from stages.errors import InputError
from stages.io.checkpoint import load_checkpoint
from stages.models.backbones import create_backbone

POOLINGS = ("gap", "gmp")
META_KEYS = ("backbone", "weights", "pooling", "num_classes", "classes", "dataset")


class CAMNet(nn.Module):
    def __init__(self, backbone: str, num_classes: int, weights: str = "none", pooling: str = "gap") -> None:
        """``num_classes`` counts foreground classes only: background has no classifier row."""
        super().__init__()
        if pooling not in POOLINGS:
            raise ValueError(f"unknown pooling {pooling!r} (use {' or '.join(POOLINGS)})")
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1 foreground class, got {num_classes}")
        self.backbone_name = backbone
        self.pooling = pooling
        self.num_classes = num_classes
        self.backbone = create_backbone(backbone, weights)
        self.classifier = nn.Conv2d(self.backbone.feature_info.channels()[-1], num_classes, 1, bias=False)
        nn.init.kaiming_normal_(self.classifier.weight)

    def cams(self, x: torch.Tensor) -> torch.Tensor:
        """Raw class activation maps (B, num_classes, h, w) at the last stage's stride; no ReLU."""
        return self.classifier(self.backbone(x)[-1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        maps = self.cams(x)
        if self.pooling == "gap":
            return maps.mean(dim=(2, 3))
        return maps.amax(dim=(2, 3))

    def param_groups(self, head_lr_mult: float) -> list[dict[str, Any]]:
        """Pretrained backbone at the base lr, the new classifier at ``head_lr_mult`` times it."""
        return [{"params": list(self.backbone.parameters())},
                {"params": list(self.classifier.parameters()), "lr_mult": head_lr_mult}]


def load_cam_net(path: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[CAMNet, dict[str, Any]]:
    """The trained network (eval mode, on ``device``) and the meta it was saved with.

    The file is ``{"model": state_dict, "meta": meta}``; the backbone is rebuilt without weights
    because the state dict replaces them all.
    """
    state = load_checkpoint(path)
    if "model" not in state or "meta" not in state:
        raise InputError(f"{path}: not a CAM network file (needs 'model' and 'meta', has {sorted(state)})")
    meta = state["meta"]
    missing = [k for k in META_KEYS if k not in meta]
    if missing:
        raise InputError(f"{path}: CAM network meta lacks {missing}")
    net = CAMNet(meta["backbone"], meta["num_classes"], weights="none", pooling=meta["pooling"])
    try:
        net.load_state_dict(state["model"])
    except RuntimeError as exc:
        raise InputError(f"{path}: weights do not fit backbone {meta['backbone']!r}: {exc}") from exc
    return net.to(device).eval(), meta
