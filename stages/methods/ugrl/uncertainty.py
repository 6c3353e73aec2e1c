"""PUM (prototype uncertainty) and ULM (uncertainty-weighted losses) of UGRL.

Per image and class present, an affinity-propagated CAM weights the last stage's features into
one vector, projected to ``d_cls`` dimensions. A class's batch prototype H_c is the sum of its
images' (unit) vectors; the global prototype follows it by EMA, ``P <- eta P + (1 - eta) H``; the
class uncertainty is ``u_c = 1 - cos(H_c, P_c)`` against the prototype before this batch's update.
The batch sums are all-reduced, so every DDP process holds the same prototypes and uncertainties.

Reconstructed (the sources do not say, see docs/methods/ugrl.md):
- Background has no CAM; its score map is ``1 - max`` of the image's foreground CAMs, so it gets a
  prototype and an uncertainty like any class (the segmentation labels include it).
- No loss of the paper trains the ``d_cls`` projection, and every uncertainty is used as a
  detached weight (a weight that gradients could lower would teach the network to look
  uncertain), so the projection is a fixed random one: a seeded Gaussian matrix, which keeps
  cosines between vectors close to those between the pooled features.
- A class seen for the first time starts its prototype at H_c and has u = 0 in that batch, as has
  a class absent from the batch: no evidence, full weight.
- Pixels are ranked for the reliable pool by their own distance ``1 - cos(g(f_ij), P_y)`` to the
  prototype of their label y (g: the same projection, per pixel of the last stage, then
  upsampled). The class-level u_y alone cannot rank pixels within a class: the pool would be
  whole classes, often only background.
"""
from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F

from stages.io.label_png import IGNORE
from stages.methods.ugrl.par import normalised_cams
from stages.runtime.distributed import DistContext, all_reduce_sum

PROJECTION_SEED = 0


def class_scores(cams: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
    """(B, C, h, w) scores in [0, 1]: background ``1 - max fg`` then the normalised CAMs."""
    fg = normalised_cams(cams, present[:, 1:])
    return torch.cat([(1 - fg.amax(dim=1, keepdim=True)).clamp(min=0), fg], dim=1)


def propagate(scores: torch.Tensor, affinity: torch.Tensor) -> torch.Tensor:
    """Scores (B, C, h, w) spread by the row-normalised affinity (B, n, n), n = h * w."""
    b, c, h, w = scores.shape
    walk = affinity.float() / affinity.float().sum(dim=-1, keepdim=True).clamp(min=1e-6)
    return (scores.flatten(2) @ walk.transpose(1, 2)).view(b, c, h, w)


def class_vectors(features: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
    """(B, C, D): each class's score-weighted mean of the features (B, D, h, w)."""
    weights = scores.flatten(2)
    pooled = weights @ features.float().flatten(2).transpose(1, 2)
    return pooled / weights.sum(dim=-1, keepdim=True).clamp(min=1e-6)


def uncertainty_weights(u: torch.Tensor, temperature: float) -> torch.Tensor:
    """ULM's weights ``exp(-u / temperature)``: 1 for a certain class, smaller the less certain."""
    return torch.exp(-u / temperature)


class PrototypeBank:
    """Global class prototypes (EMA), the class uncertainties, and the projection into their space."""

    def __init__(self, num_classes: int, in_dim: int, dim: int, eta: float) -> None:
        g = torch.Generator().manual_seed(PROJECTION_SEED)
        self.projection = torch.randn(in_dim, dim, generator=g) / math.sqrt(dim)
        self.prototypes = torch.zeros(num_classes, dim)
        self.seen = torch.zeros(num_classes, dtype=torch.bool)
        self.eta = eta

    def to(self, device: torch.device) -> "PrototypeBank":
        self.projection, self.prototypes, self.seen = (t.to(device) for t in (self.projection, self.prototypes,
                                                                               self.seen))
        return self

    def project(self, x: torch.Tensor, dim: int = -1) -> torch.Tensor:
        """Features (in_dim along ``dim``) into the prototype space."""
        return torch.movedim(torch.movedim(x.float(), dim, -1) @ self.projection, -1, dim)

    def batch_sums(self, vectors: torch.Tensor, present: torch.Tensor, dist: DistContext) -> torch.Tensor:
        """(C, d_cls) sum over the batch (all processes) of the unit projected vectors of images with c."""
        unit = F.normalize(self.project(vectors), dim=-1) * present[..., None].float()
        return all_reduce_sum(unit.sum(dim=0), dist)

    def uncertainty(self, sums: torch.Tensor) -> torch.Tensor:
        """u_c = 1 - cos(H_c, P_c) for classes in the batch with a prototype; 0 otherwise."""
        known = self.seen & (sums.norm(dim=-1) > 0)
        u = 1 - F.cosine_similarity(sums, self.prototypes, dim=-1)
        return torch.where(known, u, torch.zeros_like(u))

    def update(self, sums: torch.Tensor) -> None:
        """The EMA step for every class in ``sums``; a new class starts at its batch prototype."""
        batch = F.normalize(sums, dim=-1)
        here = sums.norm(dim=-1) > 0
        ema = self.eta * self.prototypes + (1 - self.eta) * batch
        self.prototypes = torch.where((here & self.seen)[:, None], ema,
                                      torch.where(here[:, None], batch, self.prototypes))
        self.seen = self.seen | here

    def pixel_uncertainty(self, features: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        """(B, H, W) ``1 - cos(g(f), P_label)`` at the label's grid; IGNORE pixels and classes
        without a prototype get 2, the largest distance (ranked last)."""
        cos = torch.einsum("bdhw,cd->bchw", F.normalize(self.project(features, dim=1), dim=1),
                           F.normalize(self.prototypes, dim=-1))
        cos = F.interpolate(cos, size=label.shape[-2:], mode="bilinear", align_corners=False)
        valid = (label != IGNORE) & self.seen[label.clamp(max=len(self.seen) - 1)]
        picked = cos.gather(1, label.clamp(max=cos.shape[1] - 1)[:, None])[:, 0]
        return torch.where(valid, 1 - picked, torch.full_like(picked, 2.0))

    def state_dict(self) -> dict[str, Any]:
        return {"prototypes": self.prototypes.cpu(), "seen": self.seen.cpu()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        device = self.prototypes.device
        self.prototypes, self.seen = state["prototypes"].to(device), state["seen"].to(device)
