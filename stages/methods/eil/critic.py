"""The contrastive critic V(M, F): how well a label map M clusters the features F.

Class centres are the mean features of each labelled class (paper Eq. 8); a pixel labelled k
scores the softmax, over the classes, of ``-delta * (1 - cos(f, centre_c))`` taken at its own
class k (Eq. 9), so it is high when the pixel lies near its centre and far from the others; V is
the mean over the classes present of each class's mean score (Eq. 10-11). The reward of an action
is ``V(M', F') - V(M, F)`` (Eq. 12).

Labels are given as class fractions on the feature grid (``class_fractions``): a label map at
image resolution seen through cells of the stride-4 feature map. With one-hot fractions this is
the paper's formula pixel for pixel; with fractions it is the same formula evaluated on the
image-resolution map with every pixel taking its cell's feature (nearest upsampling), without
ever upsampling 256 feature channels to image size. Reconstructed where the paper is silent:
the softmax runs over the classes present in the map (a class without labelled pixels has no
centre), and a map with no labelled pixel scores 0.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from stages.io.label_png import IGNORE


def class_fractions(label: torch.Tensor, num_classes: int, size: tuple[int, int]) -> torch.Tensor:
    """(K, h, w): the fraction of each grid cell's pixels labelled with each class (255 counts
    for none). ``label`` is an (H, W) integer map at image resolution."""
    index = torch.where(label == IGNORE, torch.full_like(label, num_classes), label).long()
    onehot = F.one_hot(index, num_classes + 1).permute(2, 0, 1).float()[:num_classes]
    return F.adaptive_avg_pool2d(onehot[None], size)[0]


def critic_value(features: torch.Tensor, fractions: torch.Tensor, delta: float = 10.0) -> torch.Tensor:
    """V for one image: ``features`` (C, h, w), ``fractions`` (K, h, w) from ``class_fractions``."""
    f = features.flatten(1).float()  # C x N
    w = fractions.flatten(1)  # K x N
    mass = w.sum(1)
    present = mass > 0
    if not bool(present.any()):
        return features.new_zeros(())
    w, mass = w[present], mass[present]
    centres = (w @ f.T) / mass[:, None]  # K' x C, Eq. 8
    cos = F.normalize(centres, dim=1) @ F.normalize(f, dim=0)  # K' x N
    score = torch.softmax(-delta * (1.0 - cos), dim=0)  # Eq. 9 for every class a pixel could take
    per_class = (w * score).sum(1) / mass  # Eq. 10: each class's score at its own pixels
    return per_class.mean()  # Eq. 11
