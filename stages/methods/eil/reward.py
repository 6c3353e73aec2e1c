"""The reward of a proposal M' against the current map M: how much better it clusters features.

The paper's reward (Eq. 12) is ``V(M', F') - V(M, F)``: F' are the features of the segmenter
after it trained on M', so a map is judged by what learning it does to the features, not by how
well it fits features learnt without it. Two estimates (the option ``reward_features``):

- ``round``: both maps on the teacher's features of the round, ``V(M', F) - V(M, F)``. Free, but
  it judges M' on features that never saw it; scribbles sit on the most typical pixels, so almost
  any addition lowers V and the reward is biased negative.
- ``updated``: ``V(M', F_M') - V(M, F_M)``, F_L the decoder's features after ``steps`` SGD steps
  (``lr``, momentum 0.9) of a copy of the teacher's decoder on the one image labelled L, the
  backbone's features fixed. Both maps get the same short update, so what any update does to V
  cancels and what remains is how well each map can be learnt. Reconstructed: the paper's F'
  comes from training on every M' for epochs, which would delay each transition by a round;
  ``python -m benchmarks.eil_reward`` measures how each estimate ranks proposals by their true
  change in precision, and how far a short update agrees with a long one.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from stages.data.canvas import SIZE_DIVISOR, padded_size
from stages.io.label_png import IGNORE
from stages.methods.ce import masked_cross_entropy
from stages.methods.eil.critic import class_fractions, critic_value

REWARD_FEATURES = ("round", "updated")
UPDATE_MOMENTUM = 0.9


@dataclass(frozen=True)
class RewardSettings:
    features: str = "round"
    steps: int = 3
    lr: float = 0.1
    delta: float = 10.0


def map_value(features: torch.Tensor, label: np.ndarray, num_classes: int, delta: float) -> torch.Tensor:
    """V(L, F) of one image: ``features`` (C, h, w), ``label`` (H, W) at image resolution."""
    fractions = class_fractions(torch.from_numpy(label).to(features.device), num_classes, features.shape[-2:])
    return critic_value(features, fractions, delta)


def label_target(label: np.ndarray) -> torch.Tensor:
    """(1, *canvas) class indices: ``label`` on the image's own canvas, the padding unlabelled."""
    canvas = padded_size(label.shape, SIZE_DIVISOR)
    target = torch.full(canvas, IGNORE, dtype=torch.long)
    target[:label.shape[0], :label.shape[1]] = torch.from_numpy(label.astype(np.int64))
    return target[None]


def decoder_loss(decoder: nn.Module, pyramid: list[torch.Tensor], target: torch.Tensor) -> torch.Tensor:
    logits = F.interpolate(decoder(pyramid), size=target.shape[-2:], mode="bilinear", align_corners=False)
    return masked_cross_entropy(logits, target)


def tuned_decoder(decoder: nn.Module, pyramid: list[torch.Tensor], label: np.ndarray, steps: int,
                  lr: float) -> nn.Module:
    """A copy of ``decoder`` after ``steps`` SGD steps on ``label`` for this one image (``pyramid``:
    the backbone's maps on the image's own canvas, as a ``TeacherView`` keeps them). BatchNorm
    keeps the teacher's statistics (eval mode): one image's batch statistics are not the network's."""
    tuned = copy.deepcopy(decoder).float().eval().requires_grad_(True)
    optimiser = torch.optim.SGD(tuned.parameters(), lr=lr, momentum=UPDATE_MOMENTUM)
    target = label_target(label).to(pyramid[0].device)
    for _ in range(steps):
        loss = decoder_loss(tuned, pyramid, target)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
    return tuned.requires_grad_(False)


class Rewarder:
    """``reward(view, M, M')`` as ``settings.features`` estimates it; ``decoder`` is the teacher's
    (fp32), used only by ``updated``."""

    def __init__(self, decoder: nn.Module, num_classes: int, settings: RewardSettings) -> None:
        if settings.features not in REWARD_FEATURES:
            raise ValueError(f"reward features {settings.features!r} not in {REWARD_FEATURES}")
        self.decoder, self.num_classes, self.s = decoder, num_classes, settings

    @property
    def needs_pyramid(self) -> bool:
        return self.s.features == "updated"

    def value(self, features: torch.Tensor, pyramid: list[torch.Tensor] | None, label: np.ndarray) -> float:
        if self.s.features == "updated":
            tuned = tuned_decoder(self.decoder, pyramid, label, self.s.steps, self.s.lr)
            with torch.no_grad():
                features = tuned.features(pyramid)[0, :, :features.shape[-2], :features.shape[-1]]
        return float(map_value(features, label, self.num_classes, self.s.delta))

    def __call__(self, features: torch.Tensor, pyramid: list[torch.Tensor] | None,
                 current: np.ndarray, proposal: np.ndarray) -> float:
        return self.value(features, pyramid, proposal) - self.value(features, pyramid, current)
