"""PL-Mix's segmentation-type losses on a mixed image's CAM, and the soft class map they compare.

Soft class probabilities (reconstructed: the source does not say how they come from the CAM):
each class map is divided by its largest magnitude, which for a map whose positive peak dominates
is exactly the division by the maximum that makes the CAMs pseudo labels come from
(``normalise_cams``). Unlike that, there is no ReLU, so pixels below zero still get a gradient,
and the scores stay in [-1, 1] even for a map that is nowhere positive (dividing by a near-zero
maximum made the losses explode in a trial run). The background gets the constant score
``camT``, as in the pseudo labels, and a softmax with temperature ``tau`` over background plus
the classes present in the mixed image turns the scores into probabilities; classes absent
from the image get probability 0. So the losses shape the very quantity that is later
thresholded at ``camT``.

Every function takes probabilities (B, C, H, W) over all C classes (background at 0) and a
target (B, H, W) of class ids with 255 = ignore; ignored pixels take part in no sum.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from stages.io.label_png import IGNORE

_NORM_EPS = 1e-5
_ABSENT = -1e4  # logit of a class that is not in the image: exp() underflows to exactly 0


def class_logits(cams: torch.Tensor, present: torch.Tensor, background: float,
                 temperature: float) -> torch.Tensor:
    """Softmax inputs (B, C, H, W) from raw CAMs (B, C-1, H, W) of the foreground classes.

    ``present`` (B, C) bool marks background (always) and the classes in each image.
    """
    peak = cams.abs().amax(dim=(-2, -1), keepdim=True) + _NORM_EPS
    scores = torch.cat([torch.full_like(cams[:, :1], background), cams / peak], dim=1) / temperature
    return scores.masked_fill(~present[:, :, None, None], _ABSENT)


def focal_loss(logits: torch.Tensor, target: torch.Tensor, gamma: float) -> torch.Tensor:
    """Mean over valid pixels of -(1 - p_t)^gamma log p_t (softmax over ``logits``' classes)."""
    valid = target != IGNORE
    log_p = F.log_softmax(logits, dim=1)
    log_pt = log_p.gather(1, target.masked_fill(~valid, 0).long().unsqueeze(1))[:, 0]
    terms = -((1 - log_pt.exp()) ** gamma) * log_pt
    return terms[valid].sum() / valid.sum().clamp_min(1)


def _overlaps(probs: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Per (image, class): soft intersection, summed probability, target pixels, and whether the
    class has target pixels at all (only those classes are scored).

    The sums over a class's target pixels are scattered by class id rather than taken over a
    product with a (B, C, H, W) one-hot target: the same sums, and with the two losses sharing
    them, a default-run step from class maps to both losses and back takes 0.37x the time
    (``python -m benchmarks.plmix_losses``).
    """
    b, c = probs.shape[:2]
    valid = (target != IGNORE).reshape(b, -1)
    ids = target.reshape(b, -1).masked_fill(~valid, 0).long()
    p = probs.reshape(b, c, -1) * valid[:, None]
    zeros = probs.new_zeros(b, c)
    inter = zeros.scatter_add(1, ids, p.gather(1, ids[:, None])[:, 0])
    y_sum = zeros.scatter_add(1, ids, valid.to(probs.dtype))
    return inter, p.sum(dim=2), y_sum, y_sum > 0


def soft_iou_and_dice_losses(probs: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The soft IoU loss, mean of 1 - sum(p y) / sum(p + y - p y), and the soft Dice loss, mean of
    1 - 2 sum(p y) / (sum p + sum y), over the (image, class) pairs the target contains."""
    inter, p_sum, y_sum, scored = _overlaps(probs, target)
    if not scored.any():
        zero = probs.sum() * 0
        return zero, zero
    iou = inter / (p_sum + y_sum - inter).clamp_min(_NORM_EPS)
    dice = 2 * inter / (p_sum + y_sum).clamp_min(_NORM_EPS)
    return (1 - iou)[scored].mean(), (1 - dice)[scored].mean()


def continuity_loss(probs: torch.Tensor) -> torch.Tensor:
    """Mean over horizontally and vertically adjacent pixel pairs of the L1 distance between
    their class-probability vectors (the spatial-continuity term of differentiable-clustering
    segmentation): it favours maps made of uniform regions."""
    dx = (probs[..., :, 1:] - probs[..., :, :-1]).abs().sum(dim=1)
    dy = (probs[..., 1:, :] - probs[..., :-1, :]).abs().sum(dim=1)
    pairs = dx.numel() + dy.numel()
    return (dx.sum() + dy.sum()) / max(pairs, 1)
