"""RSE: the reliable pool and what UGRL learns on it (supervised InfoNCE, the affinity loss).

The pool of an image is K% of each class's labelled pixels, those of lowest uncertainty; the
method's ``pool: random`` ranks them at random instead (the ablation's "contrastive without
uncertainty") and ``pool: oracle`` puts right labels first (ORACLE), so only the choice of pixels
differs. Random draws use torch's global generator, which the trainer checkpoints per process, so
a resumed run draws the same pixels.
"""
from __future__ import annotations

import math

import torch

from stages.io.label_png import IGNORE


def reliable_pool(uncertainty: torch.Tensor, label: torch.Tensor, percent: float,
                  per_class: bool = True) -> torch.Tensor:
    """(B, H, W) bool: per image, the labelled pixels of lowest uncertainty: ceil(percent%) of each
    class's pixels (``per_class``), or of all labelled pixels in one ranking.

    One ranking over all classes fills the pool with whichever class sits closest to its
    prototype, however precise its labels are; a quota per class keeps every class in the pool and
    leaves only the ranking within a class to the uncertainty. Ties are broken by position (stable
    sorts); unlabelled (IGNORE) pixels are never chosen.
    """
    valid = (label != IGNORE).flatten(1)
    key = uncertainty.flatten(1).float().masked_fill(~valid, math.inf)
    order = key.argsort(dim=1, stable=True)
    # unlabelled pixels join class 0's group, after its labelled ones (their key is inf)
    group = label.flatten(1).long().masked_fill(~valid, 0) if per_class else torch.zeros_like(order)
    group = group.gather(1, order)
    by_group = group.argsort(dim=1, stable=True)  # classes in turn, each by rising uncertainty
    order, group = order.gather(1, by_group), group.gather(1, by_group)
    groups = int(group.max()) + 1 if group.numel() else 1
    sizes = torch.zeros(len(order), groups, dtype=torch.long, device=order.device)
    members = sizes.scatter_add(1, group, torch.ones_like(group))  # where each group starts in ``order``
    start = members.cumsum(dim=1) - members
    sizes.scatter_add_(1, group, valid.gather(1, order).long())  # labelled pixels per class
    position = torch.arange(order.shape[1], device=order.device).expand_as(order)
    quota = torch.ceil(sizes * percent / 100).long()
    chosen_sorted = (position - start.gather(1, group)) < quota.gather(1, group)
    chosen = torch.zeros_like(valid).scatter_(1, order, chosen_sorted)
    return (chosen & valid).view_as(label)


def supervised_infonce(embeddings: torch.Tensor, labels: torch.Tensor, tau: float) -> torch.Tensor:
    """Supervised InfoNCE (SupCon) over N unit embeddings (N, D) with labels (N,).

    For each anchor with at least one positive (same label, not itself): the mean over its
    positives of -log(exp(z.z_p / tau) / sum over all others exp(z.z_a / tau)); averaged over
    those anchors. Zero (still differentiable) when no anchor has a positive.
    """
    n = embeddings.shape[0]
    eye = torch.eye(n, dtype=torch.bool, device=embeddings.device)
    sim = (embeddings.float() @ embeddings.float().T / tau).masked_fill(eye, -math.inf)
    log_prob = sim - torch.logsumexp(sim, dim=1, keepdim=True)
    positive = (labels[:, None] == labels[None, :]) & ~eye
    count = positive.sum(dim=1)
    per_anchor = -log_prob.masked_fill(~positive, 0).sum(dim=1) / count.clamp(min=1)
    anchors = count > 0
    if not anchors.any():
        return embeddings.sum() * 0
    return per_anchor[anchors].mean()


def sample_pool(pool: torch.Tensor, samples: int) -> torch.Tensor:
    """Flat indices (into ``pool.flatten()``) of at most ``samples`` pool pixels, drawn at random.

    The InfoNCE's similarity matrix grows with the square of its pixels, and a VOC batch of 8
    crops of 512 px has ~46k pool pixels at stride 4; only the drawn ones get embeddings at all.
    """
    chosen = pool.flatten().nonzero()[:, 0]
    if len(chosen) > samples:
        chosen = chosen[torch.randperm(len(chosen), device=chosen.device)[:samples]]
    return chosen


def affinity_loss(affinity: torch.Tensor, label: torch.Tensor, include: torch.Tensor) -> torch.Tensor:
    """AFA's affinity loss on the pairs of included, labelled positions (B, n) of one grid.

    Same-label pairs are pulled towards 1, different-label pairs towards 0; the two halves are
    averaged separately and weighted equally, since different-label pairs are far rarer.
    """
    valid = include & (label != IGNORE)
    pairs = valid[:, :, None] & valid[:, None, :]
    same = label[:, :, None] == label[:, None, :]
    a = affinity.float().clamp(1e-6, 1 - 1e-6)
    terms = []
    for mask, target in ((pairs & same, a), (pairs & ~same, 1 - a)):
        terms.append(-(target.log() * mask).sum() / mask.sum().clamp(min=1))
    return 0.5 * (terms[0] + terms[1])
