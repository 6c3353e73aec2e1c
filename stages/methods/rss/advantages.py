"""From rewards to advantages: GRPO-style normalisation (optionally synchronised over processes),
the naive image-level broadcast, and PSD's pairwise differences.

A "group" is every valid reward of one PSR scale in one step: all samples, all images, all
positions (pixel level) or all maps (image level), and with SyncAN all processes. Normalising
the image-level rewards over that same group rather than per image (GRPO proper groups the
answers of one prompt) is this project's reading of "GRPO-style over the whole group"; it also
works with N = 1, where a per-image group would have no spread.
"""
from __future__ import annotations

import torch

from stages.errors import InputError
from stages.runtime.distributed import DistContext, all_reduce_sum

STD_EPS = 1e-4  # as TRL's GRPO: keeps a group of (nearly) equal rewards from blowing up


def group_statistics(rewards: torch.Tensor, valid: torch.Tensor, dist: DistContext | None,
                     sync: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and (population) standard deviation of ``rewards[valid]``.

    SyncAN: with ``sync`` and several processes, the count, sum and sum of squares are summed
    over all processes first, so every process normalises with the statistics of the global
    group, as synchronised BatchNorm does for its statistics. Computed in float64: a sum of
    squares over millions of pixels loses the variance in float32.
    """
    r = rewards.detach().double()
    v = valid.double()
    moments = torch.stack([v.sum(), (r * v).sum(), (r * r * v).sum()])
    if sync and dist is not None:
        moments = all_reduce_sum(moments, dist)
    count, total, squares = moments.unbind()
    count = count.clamp_min(1)
    mean = total / count
    var = (squares / count - mean * mean).clamp_min(0)
    return mean, var.sqrt()


def normalised_advantages(rewards: torch.Tensor, valid: torch.Tensor, dist: DistContext | None = None,
                          sync: bool = True) -> torch.Tensor:
    """``(r - mean) / (std + eps)`` over the group; 0 where ``valid`` is False."""
    mean, std = group_statistics(rewards, valid, dist, sync)
    adv = (rewards.detach().double() - mean) / (std + STD_EPS)
    return torch.where(valid, adv, torch.zeros_like(adv)).to(rewards.dtype)


def class_balanced_advantages(rewards: torch.Tensor, valid: torch.Tensor, classes: torch.Tensor,
                              num_classes: int, dist: DistContext | None = None,
                              sync: bool = True, power: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """``reward.balance`` (beyond the paper): pixel rewards normalised within each reference class
    (its own baseline and spread), and loss weights: each position weighs its class's count to the
    power ``-power`` (``reward.balance_power``): 1 gives each class present the same total, 0 keeps
    every position at one, so only the baselines are per class.

    ``classes`` (B, h, w) is each position's reference class (255: none). With one baseline for
    all pixels, the majority class sets it: a rare class's pixels, mostly wrong, see "below
    average" for almost every action and learn only from the rare right one. Returns the
    advantages and the weights (both the shape of ``rewards``; weights average 1 over valid).
    """
    classes = classes.expand_as(rewards)
    advantages = torch.zeros_like(rewards)
    weights = torch.zeros_like(rewards)
    for c in range(num_classes):
        member = valid & (classes == c)
        counts = torch.stack([member.sum().double()])
        if sync and dist is not None:
            counts = all_reduce_sum(counts, dist)
        if counts.item() == 0:  # every process skips the same class: the all-reduces stay paired
            continue
        advantages = advantages + normalised_advantages(rewards, member, dist, sync)
        weights = weights + member.to(weights.dtype) / counts.item() ** power
    totals = torch.stack([valid.sum().double(), weights.double().sum()])
    if sync and dist is not None:
        totals = all_reduce_sum(totals, dist)
    return advantages, weights * (totals[0] / totals[1].clamp_min(1e-12)).to(weights.dtype)


def broadcast_image_advantages(image_adv: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """The naive image-level advantage: each map's scalar (N, B) on all its positions (N, B, h, w)."""
    return image_adv[..., None, None].expand(*image_adv.shape, *grid)


def psd_partner(samples: int) -> torch.Tensor:
    """PSD's pairing (this project's choice; the paper pairs "two maps" without a rule): map n of
    an image is compared with map (n + 1) mod N of the same image, so every map is the first of
    exactly one pair; with N = 2 that is the pair both ways round."""
    if samples < 2:
        raise InputError(f"PSD compares pairs of sampled maps and needs samples >= 2, got {samples}")
    return (torch.arange(samples) + 1) % samples


def psd_advantages(actions: torch.Tensor, image_rewards: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Pairwise spatial difference: the advantage of map n is ``r_n - r_partner`` on the positions
    where the two maps differ and 0 where they agree.

    ``actions`` (N, B, h, w), ``image_rewards`` and ``valid`` (N, B). The raw difference is used,
    not normalised, as the paper describes; a pair with an invalid reward gets 0.
    """
    partner = psd_partner(actions.shape[0]).to(actions.device)
    diff = image_rewards.detach() - image_rewards.detach()[partner]
    diff = torch.where(valid & valid[partner], diff, torch.zeros_like(diff))
    differs = actions != actions[partner]
    return diff[..., None, None] * differs.to(diff.dtype)
