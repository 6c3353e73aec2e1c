"""A segmenter = a timm features backbone + a decoder chosen in config.

Two decoders, both sized from the backbone's ``feature_info`` so any timm backbone fits:

- ``aspp``: DeepLabV3+ -- atrous spatial pyramid pooling on the deepest features, fused with
  the stride-4 features. DeepLabV3 uses rates (6, 12, 18) at output stride 16 and doubles them at
  stride 8; the rates here are scaled the same way to the backbone's actual stride (stride 32
  -> 3, 6, 9), so the receptive fields stay the published ones.
- ``mlp``: SegFormer's all-MLP decoder -- every stage from stride 4 down projected by a 1x1
  layer, upsampled to stride 4, concatenated and fused.

The output is per-pixel logits at the input's resolution (background is class 0).
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from stages.models.backbones import create_backbone
from stages.models.cam_net import load_cam_net

DECODERS = ("aspp", "mlp")
DECODER_CHANNELS = 256  # DeepLabV3+ and SegFormer-B0/B1 both use 256
ASPP_RATES_AT_STRIDE_16 = (6, 12, 18)
LOW_LEVEL_CHANNELS = 48  # DeepLabV3+'s reduction of the stride-4 features


@dataclass(frozen=True)
class SegmenterSpec:
    """What defines a segmenter's architecture (and, through ``weights``, its initial backbone)."""

    backbone: str
    decoder: str
    num_classes: int  # including background
    weights: str = "none"


def conv_bn_relu(cin: int, cout: int, kernel: int = 1, dilation: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel, padding=dilation * (kernel // 2), dilation=dilation, bias=False),
        nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


def stride4_index(reductions: list[int]) -> int:
    """The first feature map at stride 4 or coarser: the finest level both decoders use."""
    for i, r in enumerate(reductions):
        if r >= 4:
            return i
    raise ValueError(f"backbone has no feature map at stride >= 4 (reductions {reductions})")


class ASPP(nn.Module):
    def __init__(self, cin: int, cout: int, rates: tuple[int, ...]) -> None:
        super().__init__()
        self.branches = nn.ModuleList(
            [conv_bn_relu(cin, cout)] + [conv_bn_relu(cin, cout, 3, r) for r in rates])
        # no BatchNorm on the pooled branch: a 1x1 map would make BN fail at batch size 1
        self.pooled = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(cin, cout, 1), nn.ReLU(inplace=True))
        self.project = conv_bn_relu(cout * (len(rates) + 2), cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outs = [b(x) for b in self.branches]
        outs.append(self.pooled(x).expand(-1, -1, *x.shape[-2:]))
        return self.project(torch.cat(outs, dim=1))


class ASPPDecoder(nn.Module):
    def __init__(self, channels: list[int], reductions: list[int], num_classes: int) -> None:
        super().__init__()
        self.low = stride4_index(reductions)
        scale = 16 / reductions[-1]
        rates = tuple(max(1, round(r * scale)) for r in ASPP_RATES_AT_STRIDE_16)
        self.aspp = ASPP(channels[-1], DECODER_CHANNELS, rates)
        self.reduce_low = conv_bn_relu(channels[self.low], LOW_LEVEL_CHANNELS)
        self.fuse = nn.Sequential(
            conv_bn_relu(DECODER_CHANNELS + LOW_LEVEL_CHANNELS, DECODER_CHANNELS, 3),
            conv_bn_relu(DECODER_CHANNELS, DECODER_CHANNELS, 3))
        self.classifier = nn.Conv2d(DECODER_CHANNELS, num_classes, 1)

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        low = self.reduce_low(feats[self.low])
        high = F.interpolate(self.aspp(feats[-1]), size=low.shape[-2:], mode="bilinear", align_corners=False)
        return self.classifier(self.fuse(torch.cat([high, low], dim=1)))


class MLPDecoder(nn.Module):
    def __init__(self, channels: list[int], reductions: list[int], num_classes: int) -> None:
        super().__init__()
        self.first = stride4_index(reductions)
        self.project = nn.ModuleList(nn.Conv2d(c, DECODER_CHANNELS, 1) for c in channels[self.first:])
        self.fuse = conv_bn_relu(DECODER_CHANNELS * len(self.project), DECODER_CHANNELS)
        self.classifier = nn.Conv2d(DECODER_CHANNELS, num_classes, 1)

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        feats = feats[self.first:]
        size = feats[0].shape[-2:]
        outs = [F.interpolate(p(f), size=size, mode="bilinear", align_corners=False)
                for p, f in zip(self.project, feats)]
        return self.classifier(self.fuse(torch.cat(outs, dim=1)))


class Segmenter(nn.Module):
    def __init__(self, spec: SegmenterSpec) -> None:
        super().__init__()
        if spec.decoder not in DECODERS:
            raise ValueError(f"unknown decoder {spec.decoder!r} (use one of {', '.join(DECODERS)})")
        self.spec = spec
        self.backbone = create_backbone(spec.backbone, spec.weights)
        info = self.backbone.feature_info
        decoder = ASPPDecoder if spec.decoder == "aspp" else MLPDecoder
        self.decoder = decoder(info.channels(), info.reduction(), spec.num_classes)

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
        raise ValueError(f"{cam_path}: CAM network backbone is {meta.get('backbone')!r}, "
                         f"the segmenter's is {backbone_name!r}; they must match to copy weights")
    backbone.load_state_dict(cam_net.backbone.state_dict())
