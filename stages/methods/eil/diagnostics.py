"""Does EIL's mechanism work? Each round's proposals measured against ground truth.

On the images that have a mask (the report split, for reporting only: nothing here reaches the
policy or the segmenter), every proposal M' of the labelling phase is scored by what the method
sees (the critic's reward, the assessor's Q and its verdict) and by what it should have seen (the
true change in label precision, and the precision of the pixels it adds). A round's row says:

- ``reward_precision_spearman``: Spearman correlation, over proposals, of the reward with the
  true change in precision; positive when the critic can tell good proposals from bad ones;
- ``adopted_precision`` / ``rejected_precision`` (and ``_coverage``): precision of the pixels the
  adopted (rejected) proposals add, and their share of the known pixels of those images; the
  assessor earns its place when adopted additions are the more precise;
- ``proposal_precision`` against ``random_precision``: the pixels the round's policy adds, against
  what random thresholds add at the same coverage on the same image (interpolated between random
  actions by the number of pixels they add), so a policy is not credited for merely adding less;
  both over the images where the policy and some random draw add pixels.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.stats import spearmanr

from stages.io.label_png import IGNORE

RANDOM_ACTIONS = 8  # random threshold draws per image for the equal-coverage comparison


@dataclass(frozen=True)
class Additions:
    """Pixels a proposal adds, counted where ground truth is known."""

    added: int
    correct: int
    known: int

    @property
    def precision(self) -> float:
        return self.correct / self.added if self.added else float("nan")


def additions(old: np.ndarray, new: np.ndarray, gt: np.ndarray) -> Additions:
    valid = gt != IGNORE
    grown = (old == IGNORE) & (new != IGNORE) & valid
    return Additions(int(grown.sum()), int((new[grown] == gt[grown]).sum()), int(valid.sum()))


def precision(label: np.ndarray, gt: np.ndarray) -> float:
    mine = (label != IGNORE) & (gt != IGNORE)
    return float((label[mine] == gt[mine]).mean()) if mine.any() else float("nan")


def random_precision_at(target: int, random: list[Additions]) -> float:
    """Precision of random proposals interpolated at ``target`` added pixels (clamped to the
    range the random draws reached; NaN when none added a pixel)."""
    points = sorted((a.added, a.precision) for a in random if a.added)
    if not points or not target:
        return float("nan")
    counts, precisions = zip(*points)
    return float(np.interp(target, counts, precisions))


@dataclass(frozen=True)
class Proposal:
    """One image's proposal in the labelling phase, seen by the method and by ground truth."""

    reward: float
    adopted: bool
    delta_precision: float
    additions: Additions
    random_precision: float  # random thresholds at the same number of added pixels


def _pooled(group: list[Proposal]) -> tuple[float, float]:
    added = sum(p.additions.added for p in group)
    correct = sum(p.additions.correct for p in group)
    known = sum(p.additions.known for p in group)
    return (correct / added if added else float("nan")), (added / known if known else float("nan"))


def round_diagnostics(proposals: list[Proposal]) -> dict[str, float]:
    """The round's row (see the module docstring); NaN where a group is empty."""
    out: dict[str, float] = {"proposals": float(len(proposals))}
    rewards = np.array([p.reward for p in proposals], dtype=float)
    deltas = np.array([p.delta_precision for p in proposals], dtype=float)
    keep = np.isfinite(rewards) & np.isfinite(deltas)
    enough = keep.sum() > 2 and np.ptp(rewards[keep]) > 0 and np.ptp(deltas[keep]) > 0
    out["reward_precision_spearman"] = float(spearmanr(rewards[keep], deltas[keep])[0]) if enough else float("nan")
    for name, group in (("adopted", [p for p in proposals if p.adopted]),
                        ("rejected", [p for p in proposals if not p.adopted])):
        out[f"{name}_precision"], out[f"{name}_coverage"] = _pooled(group)
        out[f"{name}_proposals"] = float(len(group))
    compared = [p for p in proposals if p.additions.added and np.isfinite(p.random_precision)]
    out["proposal_precision"], _ = _pooled(compared)
    weight = sum(p.additions.added for p in compared)
    out["random_precision"] = (sum(p.random_precision * p.additions.added for p in compared) / weight
                               if weight else float("nan"))
    return out
