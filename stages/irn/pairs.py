"""Pixel pairs within a radius on the feature grid: the neighbourhood that the affinity labels,
the affinities and the random walk share.

Each unordered pair is listed once, as (pixel, pixel + offset) with the offset in a half plane
(``dy > 0``, or ``dy == 0`` and ``dx > 0``) and ``dy^2 + dx^2 < radius^2``: AffinityNet's
neighbourhood (its radius 5 gives 34 offsets). Pairs are kept as maps over the grid, channel p
holding the pair ``(y, x) -> (y + dy_p, x + dx_p)``, so every operation is a shift of whole maps
instead of gathering index lists.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

Offset = tuple[int, int]


def half_offsets(radius: int) -> tuple[Offset, ...]:
    """The (dy, dx) of every pair direction within ``radius``, one per unordered pair."""
    if radius < 2:
        raise ValueError(f"radius must be >= 2 (radius 1 has no neighbours), got {radius}")
    right = [(0, dx) for dx in range(1, radius)]
    below = [(dy, dx) for dy in range(1, radius) for dx in range(-radius + 1, radius)
             if dy * dy + dx * dx < radius * radius]
    return tuple(right + below)


def shifted(x: torch.Tensor, offset: Offset, fill: float) -> torch.Tensor:
    """``x[..., y + dy, x + dx]`` at every ``(y, x)`` of the last two dimensions; ``fill`` where
    that falls outside the grid. Differentiable, and the same for labels and features."""
    dy, dx = offset
    h, w = x.shape[-2:]
    m = max(abs(dy), abs(dx))
    padded = F.pad(x, (m, m, m, m), value=fill)
    return padded[..., m + dy:m + dy + h, m + dx:m + dx + w]
