"""The policy side of RSS: the segmenter's per-pixel class distribution, sampled N times.

PSR (progressive scale rewards) samples on coarse grids as well as at full resolution: the
probability map is averaged over square-ish cells (an average of distributions is a distribution,
so a cell's policy is the mean policy of its pixels), one action is drawn per cell, and its
log-probability carries the gradient back to every pixel of the cell. To score a coarse action
map, the reward sources see it at full resolution (each pixel takes its cell's action).

Cells are defined by one rule used both ways: pixel ``y`` of ``H`` belongs to cell
``y * h // H`` of ``h`` (this project's choice; the paper does not say how it pools). Pooling and
upsampling therefore agree exactly for any size, divisible or not.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

LOG_FLOOR = 1e-12  # a sampled action's probability is never 0, but its float may underflow


def grid_size(size: tuple[int, int], scale: float) -> tuple[int, int]:
    """The action grid of a PSR ``scale`` (fraction of the side) for a ``size`` (H, W) input."""
    return max(1, round(size[0] * scale)), max(1, round(size[1] * scale))


def cell_of(full: int, coarse: int, device: torch.device | None = None) -> torch.Tensor:
    """Cell index of every position along one axis (length ``full``), for ``coarse`` cells."""
    return torch.arange(full, device=device) * coarse // full


def pool_cells(x: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Mean of ``x`` (..., H, W) over the cells of a ``grid`` (h, w): (..., h, w)."""
    (H, W), (h, w) = x.shape[-2:], grid
    if (h, w) == (H, W):
        return x
    rows = F.one_hot(cell_of(H, h, x.device), h).to(x.dtype)  # (H, h)
    cols = F.one_hot(cell_of(W, w, x.device), w).to(x.dtype)  # (W, w)
    sums = torch.einsum("...yx,yi,xj->...ij", x, rows, cols)
    counts = rows.sum(0)[:, None] * cols.sum(0)[None, :]
    return sums / counts


def cell_classes(reference: torch.Tensor, grid: tuple[int, int], num_classes: int,
                 ignore: int = 255) -> torch.Tensor:
    """Each cell's most frequent labelled class in ``reference`` (B, H, W); ``ignore`` where the
    cell has no labelled pixel. At full resolution, the reference itself."""
    if tuple(grid) == tuple(reference.shape[-2:]):
        return reference
    labelled = reference != ignore
    onehot = F.one_hot(torch.where(labelled, reference, 0), num_classes).permute(0, 3, 1, 2).float()
    shares = pool_cells(onehot * labelled[:, None], grid)
    return torch.where(shares.sum(1) > 0, shares.argmax(1), ignore)


def upsample_cells(a: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Each pixel of a (H, W) ``size`` takes the value of its cell in ``a`` (..., h, w)."""
    h, w = a.shape[-2:]
    if (h, w) == tuple(size):
        return a
    return a[..., cell_of(size[0], h, a.device), :][..., cell_of(size[1], w, a.device)]


def sample_actions(probs: torch.Tensor, samples: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``samples`` action maps from per-position distributions ``probs`` (B, C, h, w).

    Returns the actions (N, B, h, w), int64, and their log-probabilities (N, B, h, w), which
    carry the gradient. Drawn from the torch RNG, whose state the trainer checkpoints per rank.
    """
    flat = probs.detach().permute(0, 2, 3, 1).reshape(-1, probs.shape[1]).float()
    actions = torch.multinomial(flat, samples, replacement=True)  # (B*h*w, N)
    actions = actions.T.reshape(samples, probs.shape[0], *probs.shape[2:])
    picked = probs.unsqueeze(0).expand(samples, -1, -1, -1, -1).gather(2, actions.unsqueeze(2)).squeeze(2)
    return actions, picked.clamp_min(LOG_FLOOR).log()
