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


def _valid_one_hot(probs: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One-hot target (B, C, H, W) and the valid-pixel mask (B, 1, H, W)."""
    valid = (target != IGNORE).unsqueeze(1)
    one_hot = F.one_hot(target.masked_fill(~valid[:, 0], 0).long(), probs.shape[1])
    return one_hot.permute(0, 3, 1, 2).to(probs.dtype) * valid, valid


def focal_loss(logits: torch.Tensor, target: torch.Tensor, gamma: float) -> torch.Tensor:
    """Mean over valid pixels of -(1 - p_t)^gamma log p_t (softmax over ``logits``' classes)."""
    valid = target != IGNORE
    log_p = F.log_softmax(logits, dim=1)
    log_pt = log_p.gather(1, target.masked_fill(~valid, 0).long().unsqueeze(1))[:, 0]
    terms = -((1 - log_pt.exp()) ** gamma) * log_pt
    return terms[valid].sum() / valid.sum().clamp_min(1)


def _overlaps(probs: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Per (image, class): soft intersection, summed probability, target pixels, and whether the
    class has target pixels at all (only those classes are scored)."""
    one_hot, valid = _valid_one_hot(probs, target)
    p = probs * valid
    inter = (p * one_hot).sum(dim=(2, 3))
    p_sum, y_sum = p.sum(dim=(2, 3)), one_hot.sum(dim=(2, 3))
    return inter, p_sum, y_sum, y_sum > 0


def soft_iou_loss(probs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean of 1 - sum(p y) / sum(p + y - p y) over (image, class) pairs the target contains."""
    inter, p_sum, y_sum, scored = _overlaps(probs, target)
    iou = inter / (p_sum + y_sum - inter).clamp_min(_NORM_EPS)
    return (1 - iou)[scored].mean() if scored.any() else probs.sum() * 0


def soft_dice_loss(probs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean of 1 - 2 sum(p y) / (sum p + sum y) over (image, class) pairs the target contains."""
    inter, p_sum, y_sum, scored = _overlaps(probs, target)
    dice = 2 * inter / (p_sum + y_sum).clamp_min(_NORM_EPS)
    return (1 - dice)[scored].mean() if scored.any() else probs.sum() * 0


def continuity_loss(probs: torch.Tensor) -> torch.Tensor:
    """Mean over horizontally and vertically adjacent pixel pairs of the L1 distance between
    their class-probability vectors (the spatial-continuity term of differentiable-clustering
    segmentation): it favours maps made of uniform regions."""
    dx = (probs[..., :, 1:] - probs[..., :, :-1]).abs().sum(dim=1)
    dy = (probs[..., 1:, :] - probs[..., :-1, :]).abs().sum(dim=1)
    pairs = dx.numel() + dy.numel()
    return (dx.sum() + dy.sum()) / max(pairs, 1)
