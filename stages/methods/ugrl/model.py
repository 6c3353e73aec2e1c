"""UGRL's network, AFA-style: backbone, 1x1 CAM classifier with global max pooling, a registered
decoder (SegFormer's ``mlp`` in the paper), an affinity branch and a pixel projection head.

Evaluation only ever calls ``model(images)`` and gets per-pixel logits at input size, like any
segmenter here. Training needs every branch: ``model(images, train=True)`` returns them in a dict.
They go through ``forward`` (not a second method) because under DDP only ``forward`` prepares
the gradient reduction, and a layer used after it (the pixel head on the pixels the method picks
from this forward's outputs) would break it: so the method's choice is a callback, ``pick``.

Affinity on the MiT backbone (stages/models/mit.py) is AFA's: the attention maps of the last
stage's blocks (every head), symmetrised, a 1x1 convolution over them, a sigmoid. On a CNN
backbone it is this project's choice: the cosine similarity of every pair of positions in each of
the last ``AFFINITY_LEVELS`` stages (pooled to the last stage's grid) plays the role of one
attention map, with the same 1x1 convolution and sigmoid. Both are symmetric (n x n over the last
stage's n positions).
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from stages.models.backbones import create_backbone
from stages.models.cam_net import load_cam_net
from stages.models.decoders import create_decoder
from stages.models.mit import DEPTHS, NUM_HEADS, MixTransformer
from stages.models.segmenter import SegmenterSpec

Pick = Callable[[dict[str, torch.Tensor], torch.Size], torch.Tensor]
AFFINITY_LEVELS = 2
# sigmoid(10 * cos - 5) at init: similar positions (cos 1) start near 1, unrelated ones (cos 0) near 0
AFFINITY_INIT_SCALE, AFFINITY_INIT_BIAS = 10.0, -5.0


class FeatureAffinity(nn.Module):
    """Pairwise affinity (B, n, n) of the last stage's n positions from feature similarity."""

    def __init__(self, levels: int = AFFINITY_LEVELS) -> None:
        super().__init__()
        self.levels = levels
        self.mix = nn.Conv2d(levels, 1, 1)
        nn.init.constant_(self.mix.weight, AFFINITY_INIT_SCALE / levels)
        nn.init.constant_(self.mix.bias, AFFINITY_INIT_BIAS)

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        grid = feats[-1].shape[-2:]
        maps = []
        for f in feats[-self.levels:]:
            f = F.normalize(F.adaptive_avg_pool2d(f.float(), grid).flatten(2), dim=1)  # B, C, n
            maps.append(f.transpose(1, 2) @ f)
        return torch.sigmoid(self.mix(torch.stack(maps, dim=1))).squeeze(1)


class AttentionAffinity(nn.Module):
    """AFA's affinity (B, n, n) from the last stage's attention maps (sr ratio 1: square)."""

    def __init__(self, maps: int) -> None:
        super().__init__()
        self.mix = nn.Conv2d(maps, 1, 1)

    def forward(self, attentions: list[torch.Tensor]) -> torch.Tensor:
        maps = torch.cat(attentions, dim=1).float()
        return torch.sigmoid(self.mix(maps + maps.transpose(-2, -1))).squeeze(1)


class UGRLNet(nn.Module):
    """``forward(x)``: segmentation logits at input size; ``forward(x, train=True)``: every branch."""

    def __init__(self, spec: SegmenterSpec, d_seg: int) -> None:
        super().__init__()
        self.spec = spec
        self.backbone = create_backbone(spec.backbone, spec.weights)
        info = self.backbone.feature_info
        channels = info.channels()
        self.decoder = create_decoder(spec.decoder, channels, info.reduction(), spec.num_classes, spec.decoder_width)
        if not hasattr(self.decoder, "features"):
            raise TypeError(f"decoder {spec.decoder!r} has no features(), the map UGRL's pixel head reads")
        # foreground classes only, no bias: the CAM network's classifier (stages/models/cam_net.py)
        self.classifier = nn.Conv2d(channels[-1], spec.num_classes - 1, 1, bias=False)
        nn.init.kaiming_normal_(self.classifier.weight)
        self.attention_affinity = isinstance(self.backbone, MixTransformer)
        if self.attention_affinity:
            self.affinity = AttentionAffinity(NUM_HEADS[-1] * DEPTHS[-1])
        else:
            self.affinity = FeatureAffinity(min(AFFINITY_LEVELS, len(channels)))
        # per pixel of the decoder map (a 1x1 convolution, applied only to the pixels picked)
        width = self.decoder.classifier.in_channels
        self.pixel_head = nn.Sequential(nn.Linear(width, width), nn.ReLU(inplace=True), nn.Linear(width, d_seg))

    def forward(self, x: torch.Tensor, train: bool = False,
                pick: Pick | None = None) -> torch.Tensor | dict[str, torch.Tensor]:
        """Logits; with ``train``, every branch. ``pick(outputs, decoder_grid)`` returns the flat
        indices (into B x h x w of the decoder map) of the pixels that get unit embeddings
        (``embeddings``, N x d_seg): the contrastive loss reads a few thousand pixels, and a
        512-wide head on every stride-4 pixel would cost more than the rest of the heads together.
        """
        if train and self.attention_affinity:
            feats, attentions = self.backbone.forward_with_attention(x)
        else:
            feats, attentions = self.backbone(x), None
        decoded = self.decoder.features(feats)
        logits = F.interpolate(self.decoder.classifier(decoded), size=x.shape[-2:], mode="bilinear",
                               align_corners=False)
        if not train:
            return logits
        cams = self.classifier(feats[-1])
        out = {
            "seg_logits": logits,
            "cams": cams,  # raw class maps (B, C-1, h, w) at the last stage's stride
            "class_logits": cams.amax(dim=(2, 3)),  # global max pooling
            "features": feats[-1],
            "decoded": decoded.detach(),  # the decoder's features: the pool's ranking reads them
            "affinity": self.affinity(attentions if self.attention_affinity else feats),
        }
        if pick is not None:
            chosen = pick(out, decoded.shape[-2:])
            vectors = decoded.permute(0, 2, 3, 1).flatten(0, 2)[chosen]
            out["embeddings"] = F.normalize(self.pixel_head(vectors).float(), dim=1)
        return out

    def init_cam_head(self, cam_path: str) -> None:
        """Start the CAM head from the CAM network's classifier (``seg.init: cam`` copies the backbone):
        PUM's class vectors then weigh features by trained CAMs from the first step, not random ones."""
        cam_net, _ = load_cam_net(cam_path, "cpu")
        if cam_net.classifier.weight.shape == self.classifier.weight.shape:
            self.classifier.load_state_dict(cam_net.classifier.state_dict())

    def param_groups(self, head_lr_mult: float) -> list[dict]:
        """The backbone at the base learning rate; every head (new layers) ``head_lr_mult`` times it."""
        backbone = set(map(id, self.backbone.parameters()))
        heads = [p for p in self.parameters() if id(p) not in backbone]
        return [{"params": list(self.backbone.parameters())}, {"params": heads, "lr_mult": head_lr_mult}]
