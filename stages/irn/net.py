"""The affinity network: a backbone, a decoder that gives per-pixel embeddings, and AffinityNet's
affinity ``a_ij = exp(-mean_c |f_i[c] - f_j[c]|)`` between embeddings of the pairs of a radius.

AffinityNet (Ahn and Kwak 2018) concatenates 1x1 projections of three backbone stages and fuses
them with a 1x1 layer at stride 8; here any registered decoder (``stages.models.decoders``, by
default ``mlp``, SegFormer's projection-and-fusion, the closest in form) maps the backbone's
stages to ``embedding_dim`` channels at its finest level (stride 4), average-pooled to the
requested grid stride. The L1 distance is averaged over channels, as AffinityNet's code does, so
the affinity's scale does not depend on the embedding width.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from stages.errors import InputError
from stages.io.checkpoint import load_checkpoint
from stages.irn.pairs import Offset, shifted
from stages.models.backbones import create_backbone
from stages.models.decoders import create_decoder, stride4_index


@dataclass(frozen=True)
class AffinitySpec:
    """What defines the network's architecture (``weights``: only its initial backbone)."""

    backbone: str
    decoder: str
    embedding_dim: int
    stride: int  # of the embedding grid, in input pixels
    weights: str = "none"


class AffinityNet(nn.Module):
    def __init__(self, spec: AffinitySpec) -> None:
        super().__init__()
        self.spec = spec
        self.backbone = create_backbone(spec.backbone, spec.weights)
        info = self.backbone.feature_info
        reductions = info.reduction()
        self.head = create_decoder(spec.decoder, info.channels(), reductions, spec.embedding_dim)
        finest = reductions[stride4_index(reductions)]
        if spec.stride % finest:
            raise InputError(f"IRN stride {spec.stride} is not a multiple of the {spec.decoder} decoder's "
                             f"output stride {finest} on backbone {spec.backbone!r}")
        self.pool = spec.stride // finest

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Embeddings (B, embedding_dim, h, w) on the stride grid."""
        embeddings = self.head(self.backbone(x))
        return F.avg_pool2d(embeddings, self.pool, ceil_mode=True) if self.pool > 1 else embeddings

    def param_groups(self, head_lr_mult: float) -> list[dict[str, Any]]:
        """The backbone at the base learning rate, the new head ``head_lr_mult`` times faster."""
        return [{"params": list(self.backbone.parameters())},
                {"params": list(self.head.parameters()), "lr_mult": head_lr_mult}]


def pair_affinities(embeddings: torch.Tensor, offsets: tuple[Offset, ...]) -> torch.Tensor:
    """(B, P, h, w) affinities in (0, 1] of the pairs ``(y, x) -> (y, x) + offset``; a pair that
    leaves the grid has a meaningless value there, which labels and the walk leave out."""
    diffs = [(shifted(embeddings, o, 0.0) - embeddings).abs().mean(dim=1) for o in offsets]
    return torch.exp(-torch.stack(diffs, dim=1))


def load_affinity_net(path: str | os.PathLike,
                      device: str | torch.device = "cpu") -> tuple[AffinityNet, dict[str, Any]]:
    """The trained network (eval mode, on ``device``) and its meta (``spec``, ``radius``, ...)."""
    state = load_checkpoint(path)
    meta = state.get("meta", {})
    if "model" not in state or meta.get("method") != "irn" or "spec" not in meta or "radius" not in meta:
        raise InputError(f"{path}: not an IRN affinity network file (refine_irn train's output)")
    spec = AffinitySpec(**{**meta["spec"], "weights": "none"})  # the state dict replaces every weight
    net = AffinityNet(spec)
    try:
        net.load_state_dict(state["model"])
    except RuntimeError as exc:
        raise InputError(f"{path}: weights do not fit {spec}: {str(exc).splitlines()[0]}") from exc
    return net.to(device).eval(), meta
