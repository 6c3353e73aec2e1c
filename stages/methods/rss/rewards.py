"""Reward sources of RSS, chosen by name in ``reward.source``: what scores a sampled action map.

- ``pseudo`` (default): the map against the variant's label folder, 255 pixels left out; per
  pixel, agreement; per map, ``reward.metric``: ``miou`` over the classes in the map or the
  labels, ``miou_reference`` over the classes in the labels only, or pixel ``accuracy``. The folder is
  the refinement's pseudo labels, or with the variant's ``pseudo_labels: gt`` the ground-truth
  masks: the paper's (ORACLE) setting, which the workflow marks in the variant's name.
- ``tags`` (image level only): from the image-level labels, no mask. The tag term is the Jaccard
  overlap between the set of foreground classes the map shows on more than ``reward.min_area`` of
  its pixels and the image's tags. The confident-region term is the map's agreement with the
  CAMs' confident regions, taken from the refinement's pseudo labels: their non-255 pixels are
  where the thresholded CAMs stay the same across the ignore band (confident foreground and
  background), CRF-refined; they come from the same tags, through the CAM network. The reward is
  ``(1 - cam_weight) * tag term + cam_weight * region term``; ``cam_weight: 0`` is the tags-only
  reward. This choice (rather than thresholds of our own on the CAM HDF5) is reconstructed: it
  reuses the confident regions the pipeline already defines, at the cost of the CRF's influence.
- ``module:function``: a user's scorer, imported from the working directory or an installed
  package, called once per sampled map as ``function(action_map, image, tags, image_id)``:
  ``action_map`` (H, W) int64 class indices at the crop's size, ``image`` the normalised crop
  (3, H, W) the network saw, ``tags`` the image's foreground class indices, ``image_id`` its id.
  It returns one number (``reward.level: image``) or an (H, W) map (``pixel``); NaN means "no
  reward here" (left out of the normalisation).

Every source returns rewards and a validity mask; a map or pixel with nothing to compare against
is invalid and gets advantage 0.
"""
from __future__ import annotations

import importlib
import os
from dataclasses import dataclass, fields
from typing import Any, Callable

import torch

from stages.errors import InputError
from stages.io.label_png import IGNORE

BUILTIN_SOURCES = ("pseudo", "tags")
LEVELS = ("pixel", "image")
METRICS = ("miou", "miou_reference", "accuracy")


@dataclass(frozen=True)
class RewardSpec:
    """The ``reward`` block of an RSS variant (defaults mirrored in the config schema)."""

    source: str = "pseudo"
    level: str = "image"
    metric: str = "miou"
    min_area: float = 0.01  # tags: share of the map's pixels above which a class counts as shown
    cam_weight: float = 0.5  # tags: weight of the confident-region term
    balance: bool = False  # pixel level: baseline, spread and loss weight per reference class
    balance_power: float = 1.0  # balance: a position weighs its class's count to this power, negated

    @classmethod
    def from_options(cls, options: dict[str, Any]) -> "RewardSpec":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(options) - known)
        if unknown:
            raise InputError(f"reward: no option(s) {', '.join(unknown)}; its options: {', '.join(sorted(known))}")
        spec = cls(**options)
        if spec.source == "gt":
            raise InputError("reward.source 'gt' is gone: the reward reads the variant's labels; give the "
                             "variant pseudo_labels: gt (and ORACLE in its name) for a ground-truth reward")
        if spec.source not in BUILTIN_SOURCES and ":" not in spec.source:
            raise InputError(f"reward.source {spec.source!r}: use one of {', '.join(BUILTIN_SOURCES)} "
                             f"or module:function")
        if spec.level not in LEVELS:
            raise InputError(f"reward.level {spec.level!r}: use pixel or image")
        if spec.metric not in METRICS:
            raise InputError(f"reward.metric {spec.metric!r}: use {' or '.join(METRICS)}")
        if spec.source == "tags" and spec.level != "image":
            raise InputError("reward.source tags scores whole maps: it needs reward.level image")
        if spec.balance and (spec.level != "pixel" or spec.source != "pseudo"):
            raise InputError("reward.balance weighs pixels by their label's class: it needs reward.level pixel "
                             "and reward.source pseudo")
        if "balance_power" in options and not spec.balance:
            raise InputError("reward.balance_power weighs the classes of reward.balance: set balance: true")
        if not 0 <= spec.balance_power <= 1:
            raise InputError(f"reward.balance_power must lie in [0, 1], got {spec.balance_power}")
        if not 0 <= spec.cam_weight <= 1 or not 0 <= spec.min_area < 1:
            raise InputError("reward.cam_weight must lie in [0, 1] and reward.min_area in [0, 1)")
        return spec

    def describe(self) -> str:
        """One line for plot titles and logs."""
        if self.source == "tags":
            return f"tags (min area {self.min_area:g}, confident-region weight {self.cam_weight:g})"
        if self.source not in BUILTIN_SOURCES:
            return f"{self.source}, {self.level} level"
        what = ("class-balanced agreement" if self.balance else "agreement") if self.level == "pixel" else self.metric
        return f"the variant's labels, {self.level}-level {what}"


@dataclass(frozen=True)
class RewardBatch:
    """What a reward source may look at for one batch of crops."""

    reference: torch.Tensor  # (B, H, W) int64: the variant's labels; 255 = none
    images: torch.Tensor  # (B, 3, H, W), as the network saw them
    tags: torch.Tensor  # (B, C) bool, image-level labels (background column False)
    ids: list[str]


class RewardSource:
    """Scores action maps (N, B, H, W) at full crop resolution."""

    def pixel(self, maps: torch.Tensor, batch: RewardBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """(rewards, valid), both (N, B, H, W)."""
        raise InputError(f"{type(self).__name__} gives no pixel-level reward: use reward.level image")

    def image(self, maps: torch.Tensor, batch: RewardBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """(rewards, valid), both (N, B)."""
        raise NotImplementedError


def agreement(maps: torch.Tensor, reference: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per pixel: 1 where the action equals the reference, 0 elsewhere; valid where it has a label."""
    valid = (reference != IGNORE).expand_as(maps)
    return (maps == reference).float(), valid


def map_accuracy(maps: torch.Tensor, reference: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per map: share of labelled pixels whose action equals the reference."""
    hits, valid = agreement(maps, reference)
    counted = valid.sum((-2, -1))
    return (hits * valid).sum((-2, -1)) / counted.clamp_min(1), counted > 0


def map_confusion(maps: torch.Tensor, reference: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Per map: (N, B, C, C) counts of (reference, action) pairs over labelled pixels, in one
    bincount (a loop over classes cost most of an RSS step at N = 8)."""
    n, b = maps.shape[:2]
    reference = reference.expand_as(maps)
    labelled = reference != IGNORE
    which = torch.arange(n * b, device=maps.device).reshape(n, b, 1, 1).expand_as(maps)
    pairs = (which * num_classes + reference) * num_classes + maps
    bins = n * b * num_classes * num_classes
    counts = torch.bincount(torch.where(labelled, pairs, bins).flatten(), minlength=bins + 1)
    return counts[:bins].reshape(n, b, num_classes, num_classes)  # the last bin: unlabelled pixels


def map_miou(maps: torch.Tensor, reference: torch.Tensor, num_classes: int,
             reference_only: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Per map: mean IoU over labelled pixels, over the classes in the map or the reference there
    (the usual per-image mIoU) or, with ``reference_only``, in the reference only.

    Under a sampled (stochastic) map the two differ in kind: over both, a class the labels lack
    adds a zero to the mean as soon as one pixel shows it, so a right map with 1% of its pixels
    sampled at random scores about a fifth of a deterministic all-background one on a toy image
    (docs/methods/rss.md); over the reference only, such a pixel costs only its own share."""
    confusion = map_confusion(maps, reference, num_classes).float()
    inter = confusion.diagonal(dim1=-2, dim2=-1)
    union = confusion.sum(-1) + confusion.sum(-2) - inter
    present = confusion.sum(-1) > 0 if reference_only else union > 0
    iou = torch.where(present, inter / union.clamp_min(1), 0.0)
    return iou.sum(-1) / present.sum(-1).clamp_min(1), present.any(-1)


@dataclass(frozen=True)
class MaskReward(RewardSource):
    """``pseudo``: against the variant's label map."""

    metric: str
    num_classes: int

    def pixel(self, maps: torch.Tensor, batch: RewardBatch) -> tuple[torch.Tensor, torch.Tensor]:
        return agreement(maps, batch.reference)

    def image(self, maps: torch.Tensor, batch: RewardBatch) -> tuple[torch.Tensor, torch.Tensor]:
        if self.metric == "accuracy":
            return map_accuracy(maps, batch.reference)
        return map_miou(maps, batch.reference, self.num_classes, self.metric == "miou_reference")


def tag_jaccard(maps: torch.Tensor, tags: torch.Tensor, min_area: float) -> torch.Tensor:
    """Per map: |shown & tagged| / |shown | tagged| over foreground classes (1 when both are empty)."""
    num_classes = tags.shape[1]
    areas = torch.stack([(maps == c).float().mean((-2, -1)) for c in range(1, num_classes)], -1)
    shown = areas > min_area  # (N, B, C - 1)
    tagged = tags[:, 1:].expand_as(shown)
    union = (shown | tagged).sum(-1)
    inter = (shown & tagged).sum(-1)
    return torch.where(union > 0, inter / union.clamp_min(1), 1.0)


@dataclass(frozen=True)
class TagReward(RewardSource):
    """``tags``: image-level labels plus the CAMs' confident regions (module docstring)."""

    min_area: float
    cam_weight: float

    def image(self, maps: torch.Tensor, batch: RewardBatch) -> tuple[torch.Tensor, torch.Tensor]:
        tag_term = tag_jaccard(maps, batch.tags, self.min_area)
        region, has_region = map_accuracy(maps, batch.reference)
        # a crop without confident pixels is scored by its tags alone
        region = torch.where(has_region, region, tag_term)
        reward = (1 - self.cam_weight) * tag_term + self.cam_weight * region
        return reward, torch.ones_like(has_region)


def import_reward_function(spec: str) -> Callable[..., Any]:
    """The callable named by ``module:function``; errors name the option and what went wrong."""
    module_name, _, name = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise InputError(f"reward.source {spec!r}: cannot import module {module_name!r} ({exc}); it must "
                         f"be importable from the working directory ({os.getcwd()}) or an installed "
                         f"package") from exc
    fn = getattr(module, name, None)
    if not callable(fn):
        raise InputError(f"reward.source {spec!r}: module {module_name!r} has no function {name!r}")
    return fn


@dataclass(frozen=True)
class UserReward(RewardSource):
    """A user's ``module:function``, called once per sampled map (module docstring)."""

    spec: str
    fn: Callable[..., Any]

    def _scores(self, maps: torch.Tensor, batch: RewardBatch, per_pixel: bool) -> torch.Tensor:
        out = []
        for n in range(maps.shape[0]):
            for b in range(maps.shape[1]):
                tags = batch.tags[b].nonzero().flatten().tolist()
                value = self.fn(maps[n, b], batch.images[b], tags, batch.ids[b])
                score = torch.as_tensor(value, dtype=torch.float32, device=maps.device)
                want = tuple(maps.shape[-2:]) if per_pixel else ()
                fits = tuple(score.shape) == want if per_pixel else score.numel() == 1
                if not fits:
                    expected = f"an array of the map's shape {want}" if per_pixel else "one number"
                    raise InputError(
                        f"reward.source {self.spec!r} returned shape {tuple(score.shape)} for image "
                        f"{batch.ids[b]!r}; at reward.level {'pixel' if per_pixel else 'image'} it must "
                        f"return {expected}")
                out.append(score.reshape(want))
        return torch.stack(out).reshape(*maps.shape[:2], *out[0].shape)

    def pixel(self, maps: torch.Tensor, batch: RewardBatch) -> tuple[torch.Tensor, torch.Tensor]:
        scores = self._scores(maps, batch, per_pixel=True)
        return scores.nan_to_num(0.0), ~scores.isnan()

    def image(self, maps: torch.Tensor, batch: RewardBatch) -> tuple[torch.Tensor, torch.Tensor]:
        scores = self._scores(maps, batch, per_pixel=False)
        return scores.nan_to_num(0.0), ~scores.isnan()


def make_reward_source(spec: RewardSpec, num_classes: int) -> RewardSource:
    """The source ``spec.source`` names; a user function is imported here, at training time only."""
    if spec.source == "pseudo":
        return MaskReward(spec.metric, num_classes)
    if spec.source == "tags":
        return TagReward(spec.min_area, spec.cam_weight)
    return UserReward(spec.source, import_reward_function(spec.source))
