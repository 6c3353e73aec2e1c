"""PAR, AFA's pixel-adaptive refinement, and the online targets UGRL derives from refined CAMs.

PAR moves class scores along the image's colours: every pixel repeatedly takes a weighted mean of
its 8 neighbours at several dilations, weighted by how alike their colours are (relative to the
colour spread of the neighbourhood) plus a small weight for nearness. CAMs are blobs at stride 16
or 32; after PAR their edges follow the object's. Settings are AFA's: dilations 1..24, 10
iterations, colour scale 0.3, position weight 0.01, run at half the crop size.

Differences from AFA's code, choices of this project: the weights of a pixel are normalised to
sum to 1, so the scores keep their scale over the iterations (the thresholds below keep their
meaning, and one refinement serves both, see ``cam_targets``), and neighbours are read by slicing
a replicate-padded map instead of a convolution.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from stages.data.tensors import IMAGENET_MEAN, IMAGENET_STD
from stages.io.label_png import IGNORE

DILATIONS = (1, 2, 4, 8, 12, 24)
ITERATIONS = 10
COLOUR_SCALE = 0.3
POSITION_WEIGHT = 0.01
PAR_SCALE = 0.5  # PAR runs on the crop at half size, as in AFA
FG_THRESHOLD, BG_THRESHOLD = 0.55, 0.35  # fg above, bg below, ignored between

_OFFSETS = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if (dy, dx) != (0, 0)]


def neighbours(x: torch.Tensor, dilations: tuple[int, ...] = DILATIONS) -> torch.Tensor:
    """(B, C, H, W) -> (B, C, 8 * len(dilations), H, W): the 8 neighbours at every dilation."""
    h, w = x.shape[-2:]
    out = []
    for d in dilations:
        padded = F.pad(x, (d, d, d, d), mode="replicate")
        out += [padded[..., d + dy * d:d + dy * d + h, d + dx * d:d + dx * d + w] for dy, dx in _OFFSETS]
    return torch.stack(out, dim=2)


def _neighbour_distances(dilations: tuple[int, ...]) -> torch.Tensor:
    return torch.tensor([d * math.hypot(dy, dx) for d in dilations for dy, dx in _OFFSETS])


def par_weights(image: torch.Tensor, dilations: tuple[int, ...] = DILATIONS) -> torch.Tensor:
    """(B, 1, N, H, W) weights over each pixel's N neighbours, summing to 1."""
    near = neighbours(image, dilations)
    spread = near.std(dim=2, keepdim=True)
    colour = -((near - image.unsqueeze(2)).abs() / (spread + 1e-8) / COLOUR_SCALE).pow(2).mean(1, keepdim=True)
    dist = _neighbour_distances(dilations).to(image)
    position = -(dist / dist.std() / COLOUR_SCALE).pow(2).view(1, 1, -1, 1, 1)
    weights = colour.softmax(dim=2) + POSITION_WEIGHT * position.softmax(dim=2)
    return weights / weights.sum(dim=2, keepdim=True)


def par_refine(image: torch.Tensor, scores: torch.Tensor, iterations: int = ITERATIONS,
               dilations: tuple[int, ...] = DILATIONS) -> torch.Tensor:
    """Scores (B, K, h, w) refined along the colours of ``image`` (B, 3, H, W), at H x W."""
    scores = F.interpolate(scores.float(), size=image.shape[-2:], mode="bilinear", align_corners=False)
    weights = par_weights(image.float(), dilations)
    for _ in range(iterations):
        scores = (neighbours(scores, dilations) * weights).sum(dim=2)
    return scores


def denormalise(image: torch.Tensor) -> torch.Tensor:
    """The network's input back in 0..1 RGB, the colours PAR compares."""
    mean = torch.tensor(IMAGENET_MEAN, device=image.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=image.device).view(1, 3, 1, 1)
    return image.float() * std + mean


def normalised_cams(cams: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
    """ReLU'd CAMs scaled to max 1 per image and class, zero for classes the image lacks."""
    cams = F.relu(cams.float()) * present[:, :, None, None]
    return cams / (cams.amax(dim=(2, 3), keepdim=True) + 1e-5)


@torch.no_grad()
def cam_targets(image: torch.Tensor, cams: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
    """Online labels (B, H, W) from the network's CAMs: PAR-refined, fg > 0.55, bg < 0.35, 255 between.

    AFA puts a constant background score (0.55, then 0.35) beside the class scores before PAR and
    takes the argmax: a pixel is foreground when a class beats 0.55 after refinement, background
    when even 0.35 beats every class, ignored otherwise. With weights that sum to 1 PAR leaves a
    constant plane as it is, so one refinement of the class scores compared with both thresholds
    gives the same labels at half the cost; and only classes present in the batch are refined
    (PAR keeps a zero map zero). ``present`` (B, C-1) are the image-level labels.
    """
    size = image.shape[-2:]
    small = F.interpolate(denormalise(image), scale_factor=PAR_SCALE, mode="bilinear", align_corners=False)
    scores = normalised_cams(cams, present)
    shown = present.bool().any(dim=0)
    refined = torch.zeros(scores.shape[0], scores.shape[1], *small.shape[-2:], device=scores.device)
    if shown.any():
        refined[:, shown] = par_refine(small, scores[:, shown])
    best, cls = refined.max(dim=1)
    label = torch.where(best > FG_THRESHOLD, cls + 1, torch.where(best < BG_THRESHOLD, 0, IGNORE))
    return F.interpolate(label[:, None].float(), size=size, mode="nearest")[:, 0].long()
