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
- Pixels are ranked for the reliable pool by a second set of prototypes in the decoder's feature
  space (``PixelPrototypes``; the measurement that chose it is in docs/methods/ugrl.md). The
  class-level u_y alone cannot rank pixels within a class: the pool would be whole classes.
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

    def state_dict(self) -> dict[str, Any]:
        return {"prototypes": self.prototypes.cpu(), "seen": self.seen.cpu()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        device = self.prototypes.device
        self.prototypes, self.seen = state["prototypes"].to(device), state["seen"].to(device)


class PixelPrototypes:
    """Class prototypes in the decoder's feature space, which rank pixels for the reliable pool.

    Chosen by measurement (benchmarks/ugrl_ranking.py, docs/methods/ugrl.md): the decoder's
    features (stride 4) rank label correctness better than the last stage's (stride 32, a few cells
    per crop); features are centred by their running mean, since post-ReLU features share a
    positive mean that makes every cosine high; a pixel's certainty is a margin, the cosine to its
    label's prototype minus the best cosine to another class present in the image; and a class's
    prototype is the mean of its labelled pixels' features (CAM-weighted vectors, PUM's, ranked no
    better and leave a class whose CAM never fires without a prototype).

    Prototypes and mean are bias-corrected EMAs (the sum of past batches weighted by ``eta^age``,
    divided by the sum of the weights), so the first batch, seen by an untrained decoder, fades
    like any other instead of seeding the average.
    """

    def __init__(self, num_classes: int, dim: int, eta: float) -> None:
        self.sums = torch.zeros(num_classes, dim)
        self.weights = torch.zeros(num_classes)
        self.mean_sum = torch.zeros(dim)
        self.mean_weight = torch.zeros(())
        self.eta = eta

    def to(self, device: torch.device) -> "PixelPrototypes":
        self.sums, self.weights, self.mean_sum, self.mean_weight = (
            t.to(device) for t in (self.sums, self.weights, self.mean_sum, self.mean_weight))
        return self

    @property
    def mean(self) -> torch.Tensor:
        return self.mean_sum / self.mean_weight.clamp(min=1e-12)

    @property
    def seen(self) -> torch.Tensor:
        return self.weights > 0

    def prototypes(self) -> torch.Tensor:
        """(C, D) unit prototypes (zero for a class never seen)."""
        return F.normalize(self.sums / self.weights.clamp(min=1e-12)[:, None], dim=-1)

    def batch_sums(self, features: torch.Tensor, label: torch.Tensor,
                   dist: DistContext) -> tuple[torch.Tensor, torch.Tensor]:
        """(C, D) sums over the batch of each image's unit mean centred feature of the pixels labelled
        c (``label`` at the features' grid), and (D,) the batch's mean feature; both all-reduced."""
        f = features.float() - self.mean[None, :, None, None] if self.mean_weight > 0 else features.float()
        num_classes = len(self.weights)
        weights = F.one_hot(label.clamp(max=num_classes).long(), num_classes + 1)[..., :num_classes]
        weights = weights.permute(0, 3, 1, 2).float()  # IGNORE (255) falls in the dropped last column
        present = weights.sum(dim=(2, 3)) > 0
        unit = F.normalize(class_vectors(f, weights), dim=-1) * present[..., None].float()
        mean = features.float().mean(dim=(0, 2, 3)) / dist.world_size
        return all_reduce_sum(unit.sum(dim=0), dist), all_reduce_sum(mean, dist)

    def update(self, sums: torch.Tensor, mean: torch.Tensor) -> None:
        here = sums.norm(dim=-1) > 0
        batch = F.normalize(sums, dim=-1)
        self.sums = torch.where(here[:, None], self.eta * self.sums + (1 - self.eta) * batch, self.sums)
        self.weights = torch.where(here, self.eta * self.weights + (1 - self.eta), self.weights)
        self.mean_sum = self.eta * self.mean_sum + (1 - self.eta) * mean
        self.mean_weight = self.eta * self.mean_weight + (1 - self.eta)

    def certainty(self, features: torch.Tensor, label: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
        """(B, H, W) margin ``cos(f, P_y) - max over other present classes c of cos(f, P_c)`` at the
        label's grid, in [-2, 2]; unlabelled pixels and classes without a prototype get -inf."""
        f = F.normalize(features.float() - self.mean[None, :, None, None], dim=1)
        cos = torch.einsum("bdhw,cd->bchw", f, self.prototypes())
        cos = F.interpolate(cos, size=label.shape[-2:], mode="bilinear", align_corners=False)
        y = label.clamp(max=cos.shape[1] - 1)[:, None]
        own = cos.gather(1, y)[:, 0]
        rivals = present[:, :, None, None] & self.seen[None, :, None, None]
        rival = cos.masked_fill(~rivals, -math.inf).scatter(1, y, -math.inf).amax(dim=1)
        margin = own - rival.clamp(min=-1)  # no other class: the margin against cos -1
        valid = (label != IGNORE) & self.seen[label.clamp(max=len(self.seen) - 1)]
        return torch.where(valid, margin, torch.full_like(margin, -math.inf))

    def state_dict(self) -> dict[str, Any]:
        return {"sums": self.sums.cpu(), "weights": self.weights.cpu(), "mean_sum": self.mean_sum.cpu(),
                "mean_weight": self.mean_weight.cpu()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        device = self.sums.device
        for key, value in state.items():
            setattr(self, key, value.to(device))
