"""Segmentation decoders by name, a registry in the style of timm's model registry.

Every decoder is sized from the backbone's ``feature_info`` (channels and reductions of each
level), so any timm backbone fits, and maps the feature list to class logits at the finest level
it uses. ``create_decoder(name, ...)`` is the only entry point; ``register_decoder`` adds one, and
the config schema's ``seg.decoder`` enum is kept equal to ``DECODERS`` by a test. Each decoder's
``features`` is the map its 1x1 ``classifier`` reads, so a method can put its own heads on it.

- ``aspp``: DeepLabV3+ -- atrous spatial pyramid pooling on the deepest features, fused with
  the stride-4 features. DeepLabV3 uses rates (6, 12, 18) at output stride 16 and doubles them at
  stride 8; the rates here are scaled the same way to the backbone's actual stride (stride 32
  -> 3, 6, 9), so the receptive fields stay the published ones.
- ``mlp``: SegFormer's all-MLP decoder -- every stage from stride 4 down projected by a 1x1
  layer, upsampled to stride 4, concatenated and fused.
- ``sfpnext``: RSS's SFPNeXt -- Semantic FPN (Kirillov et al. 2019: FPN from stride 4 down,
  each level brought to stride 4 by 3x3 conv + GroupNorm + ReLU + 2x upsampling stages, summed)
  with a self-attention block. Where the block sits and its form are reconstructed (the RSS
  paper names only "Semantic FPN combined with self-attention"): one pre-norm transformer block
  (multi-head self-attention and an MLP, positions from a depthwise 3x3 convolution) on the
  coarsest lateral map, before the top-down pathway spreads its global context to every level.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from stages.errors import InputError

DECODER_CHANNELS = 256  # the default width: DeepLabV3+ and SegFormer-B0/B1 both use 256
ASPP_RATES_AT_STRIDE_16 = (6, 12, 18)
LOW_LEVEL_CHANNELS = 48  # DeepLabV3+'s reduction of the stride-4 features

# (channels, reductions, num_classes, width) -> decoder
DecoderFactory = Callable[[list[int], list[int], int, int], nn.Module]
DECODERS: dict[str, DecoderFactory] = {}


def register_decoder(name: str) -> Callable[[DecoderFactory], DecoderFactory]:
    """Class decorator: make a decoder available under ``name`` (config ``seg.decoder``)."""
    def add(factory: DecoderFactory) -> DecoderFactory:
        if name in DECODERS:
            raise ValueError(f"decoder {name!r} is registered twice")
        DECODERS[name] = factory
        return factory
    return add


def create_decoder(name: str, channels: list[int], reductions: list[int], num_classes: int,
                   width: int = DECODER_CHANNELS) -> nn.Module:
    """The decoder ``name``, ``width`` channels wide (config ``seg.decoder_width``).

    The width sets the cost of the stride-4 layers, which dominate a small backbone's forward
    pass: the published 256 suits a GPU, a narrower one a first look on a CPU.
    """
    if name not in DECODERS:
        raise InputError(f"unknown decoder {name!r} (use one of {', '.join(sorted(DECODERS))})")
    return DECODERS[name](channels, reductions, num_classes, width)


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
    def __init__(self, channels: list[int], reductions: list[int], num_classes: int, width: int) -> None:
        super().__init__()
        self.low = stride4_index(reductions)
        scale = 16 / reductions[-1]
        rates = tuple(max(1, round(r * scale)) for r in ASPP_RATES_AT_STRIDE_16)
        self.aspp = ASPP(channels[-1], width, rates)
        self.reduce_low = conv_bn_relu(channels[self.low], LOW_LEVEL_CHANNELS)
        self.fuse = nn.Sequential(conv_bn_relu(width + LOW_LEVEL_CHANNELS, width, 3), conv_bn_relu(width, width, 3))
        self.classifier = nn.Conv2d(width, num_classes, 1)

    def features(self, feats: list[torch.Tensor]) -> torch.Tensor:
        """The fused ``width``-wide map the classifier reads (methods put heads on it)."""
        low = self.reduce_low(feats[self.low])
        high = F.interpolate(self.aspp(feats[-1]), size=low.shape[-2:], mode="bilinear", align_corners=False)
        return self.fuse(torch.cat([high, low], dim=1))

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        return self.classifier(self.features(feats))


@register_decoder("mlp")
class MLPDecoder(nn.Module):
    def __init__(self, channels: list[int], reductions: list[int], num_classes: int, width: int) -> None:
        super().__init__()
        self.first = stride4_index(reductions)
        self.project = nn.ModuleList(nn.Conv2d(c, width, 1) for c in channels[self.first:])
        self.fuse = conv_bn_relu(width * len(self.project), width)
        self.classifier = nn.Conv2d(width, num_classes, 1)

    def features(self, feats: list[torch.Tensor]) -> torch.Tensor:
        """The fused ``width``-wide map the classifier reads (methods put heads on it)."""
        feats = feats[self.first:]
        size = feats[0].shape[-2:]
        outs = [F.interpolate(p(f), size=size, mode="bilinear", align_corners=False)
                for p, f in zip(self.project, feats)]
        return self.fuse(torch.cat(outs, dim=1))

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        return self.classifier(self.features(feats))


SFPN_HEAD_RATIO = 2  # Semantic FPN's per-level heads are half its FPN's width (128 of 256)
SFPN_GROUPS = 32  # GroupNorm groups in the Semantic FPN head
ATTENTION_HEADS = 8
ATTENTION_MLP_RATIO = 4


class SelfAttentionBlock(nn.Module):
    """A pre-norm transformer block on a feature map, sized for any spatial extent."""

    def __init__(self, channels: int, heads: int, mlp_ratio: int) -> None:
        super().__init__()
        self.position = nn.Conv2d(channels, channels, 3, padding=1, groups=channels)
        self.norm1 = nn.LayerNorm(channels)
        self.attention = nn.MultiheadAttention(channels, heads, batch_first=True)
        self.norm2 = nn.LayerNorm(channels)
        self.mlp = nn.Sequential(nn.Linear(channels, channels * mlp_ratio), nn.GELU(),
                                 nn.Linear(channels * mlp_ratio, channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.position(x)
        b, c, h, w = x.shape
        tokens = x.flatten(2).transpose(1, 2)
        q = self.norm1(tokens)
        tokens = tokens + self.attention(q, q, q, need_weights=False)[0]
        tokens = tokens + self.mlp(self.norm2(tokens))
        return tokens.transpose(1, 2).reshape(b, c, h, w)


def conv_gn_relu(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.GroupNorm(SFPN_GROUPS, cout),
                         nn.ReLU(inplace=True))


@register_decoder("sfpnext")
class SFPNeXtDecoder(nn.Module):
    def __init__(self, channels: list[int], reductions: list[int], num_classes: int, width: int) -> None:
        super().__init__()
        head = width // SFPN_HEAD_RATIO
        if head % SFPN_GROUPS or width % ATTENTION_HEADS:
            raise InputError(f"sfpnext: decoder width {width} must be a multiple of "
                             f"{SFPN_GROUPS * SFPN_HEAD_RATIO} (GroupNorm groups of its heads)")
        self.first = stride4_index(reductions)
        used = channels[self.first:]
        self.lateral = nn.ModuleList(nn.Conv2d(c, width, 1) for c in used)
        self.attention = SelfAttentionBlock(width, ATTENTION_HEADS, ATTENTION_MLP_RATIO)
        self.smooth = nn.ModuleList(nn.Conv2d(width, width, 3, padding=1) for _ in used)
        # level k (0 = finest) needs k upsampling stages; the finest still gets one conv
        self.heads = nn.ModuleList(
            nn.ModuleList(conv_gn_relu(width if j == 0 else head, head) for j in range(max(1, k)))
            for k in range(len(used)))
        self.classifier = nn.Conv2d(head, num_classes, 1)

    def features(self, feats: list[torch.Tensor]) -> torch.Tensor:
        """The summed stride-4 map (half the decoder's width) the classifier reads."""
        laterals = [conv(f) for conv, f in zip(self.lateral, feats[self.first:])]
        laterals[-1] = self.attention(laterals[-1])
        for k in range(len(laterals) - 2, -1, -1):  # top-down pathway
            laterals[k] = laterals[k] + F.interpolate(laterals[k + 1], size=laterals[k].shape[-2:], mode="nearest")
        pyramid = [conv(p) for conv, p in zip(self.smooth, laterals)]
        total = 0
        for k, (stages, x) in enumerate(zip(self.heads, pyramid)):
            for j, stage in enumerate(stages):
                x = stage(x)
                if k > 0:  # up one level, to the exact size of the next finer map
                    x = F.interpolate(x, size=pyramid[k - 1 - j].shape[-2:], mode="bilinear", align_corners=False)
            total = total + x
        return total

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        return self.classifier(self.features(feats))
