"""Segmentation decoders by name, a registry in the style of timm's model registry.

Every decoder is sized from the backbone's ``feature_info`` (channels and reductions of each
level), so any timm backbone fits, and maps the feature list to class logits at the finest level
it uses. ``create_decoder(name, ...)`` is the only entry point; ``register_decoder`` adds one, and
the config schema's ``seg.decoder`` enum is kept equal to ``DECODERS`` by a test.

- ``aspp``: DeepLabV3+ -- atrous spatial pyramid pooling on the deepest features, fused with
  the stride-4 features. DeepLabV3 uses rates (6, 12, 18) at output stride 16 and doubles them at
  stride 8; the rates here are scaled the same way to the backbone's actual stride (stride 32
  -> 3, 6, 9), so the receptive fields stay the published ones.
- ``mlp``: SegFormer's all-MLP decoder -- every stage from stride 4 down projected by a 1x1
  layer, upsampled to stride 4, concatenated and fused.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

DECODER_CHANNELS = 256  # DeepLabV3+ and SegFormer-B0/B1 both use 256
ASPP_RATES_AT_STRIDE_16 = (6, 12, 18)
LOW_LEVEL_CHANNELS = 48  # DeepLabV3+'s reduction of the stride-4 features



DecoderFactory = Callable[[list[int], list[int], int], nn.Module]
DECODERS: dict[str, DecoderFactory] = {}


def register_decoder(name: str) -> Callable[[DecoderFactory], DecoderFactory]:
    """Class decorator: make a decoder available under ``name`` (config ``seg.decoder``)."""
    def add(factory: DecoderFactory) -> DecoderFactory:
        if name in DECODERS:
            raise ValueError(f"decoder {name!r} is registered twice")
        DECODERS[name] = factory
        return factory
    return add


def create_decoder(name: str, channels: list[int], reductions: list[int], num_classes: int) -> nn.Module:
    if name not in DECODERS:
        raise ValueError(f"unknown decoder {name!r} (use one of {', '.join(sorted(DECODERS))})")
    return DECODERS[name](channels, reductions, num_classes)


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


@register_decoder("aspp")
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


@register_decoder("mlp")
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
