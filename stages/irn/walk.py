"""The random walk: CAMs spread along high affinity, on the embedding grid of each image.

Transition matrix (AffinityNet): ``W = A^beta`` over the pairs within the radius, symmetric,
with a self-loop of affinity 1 on every node, then ``T = D^-1 W`` (rows sum to 1, so a walked
score is a weighted mean of its neighbours' scores). AffinityNet computes ``T^(2^log_t)`` by
squaring a dense N x N matrix; here ``T`` stays sparse (CSR) and is applied ``2^log_t`` times
to the scores, which gives the same result. Memory: ``T`` holds ``(2P + 1) N`` entries of 12
bytes (float32 value, int64 column) for N grid nodes and P = 34 pair directions at radius 5: a
500 x 375 VOC image at stride 4 (N = 11,750) needs about 10 MB, where the dense matrix would need
550 MB and each squaring N^3 operations. 256 steps take about 0.3 s on one CPU core there.

Scores (AffinityNet): the image's CAMs plus a background score ``(1 - max_c CAM_c)^alpha``, all
at image resolution, area-averaged onto the grid, walked, and upsampled back (bilinear). The
walked file must keep this project's CAM format (foreground classes only, a constant background
threshold swept downstream), so each class is written as ``rw_c / (rw_c + rw_bg)``: at threshold
0.5 the pseudo labels are exactly AffinityNet's argmax over background and classes, and the
sweep on the refined file picks its own threshold as for any CAM file.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from stages.irn.pairs import Offset

_EPS = 1e-5


@dataclass(frozen=True)
class WalkSettings:
    beta: float  # power of the affinities: higher keeps the walk closer inside regions
    log_t: int  # the walk takes 2^log_t steps
    alpha: float  # power of the background score (1 - max CAM)


def pair_indices(size: tuple[int, int], offsets: tuple[Offset, ...],
                 device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(from, to, which) of every pair inside an (h, w) grid: flat node indices of both ends, and
    the flat position of its affinity in a (P, h, w) map."""
    h, w = size
    nodes = torch.arange(h * w, device=device).view(h, w)
    starts, ends, which = [], [], []
    for p, (dy, dx) in enumerate(offsets):
        ys, xs = slice(0, max(0, h - dy)), slice(max(0, -dx), max(0, w - max(0, dx)))
        start = nodes[ys, xs].reshape(-1)
        starts.append(start)
        ends.append(start + dy * w + dx)
        which.append(start + p * h * w)
    return torch.cat(starts), torch.cat(ends), torch.cat(which)


def transition_matrix(affinity: torch.Tensor, offsets: tuple[Offset, ...], beta: float) -> torch.Tensor:
    """Row-normalised sparse (N, N) CSR matrix from (P, h, w) affinities of ``offsets``."""
    _, h, w = affinity.shape
    n = h * w
    start, end, which = pair_indices((h, w), offsets, affinity.device)
    weight = affinity.reshape(-1)[which].float() ** beta
    self_loop = torch.arange(n, device=affinity.device)
    rows = torch.cat([start, end, self_loop])
    cols = torch.cat([end, start, self_loop])
    values = torch.cat([weight, weight, torch.ones(n, device=affinity.device)])
    values = values / torch.zeros(n, device=affinity.device).index_add_(0, rows, values)[rows]
    order = torch.argsort(rows * n + cols)
    crow = torch.zeros(n + 1, dtype=torch.int64, device=affinity.device)
    crow[1:] = torch.cumsum(torch.bincount(rows, minlength=n), 0)
    with warnings.catch_warnings():  # torch calls its CSR support "beta" on every construction
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
        return torch.sparse_csr_tensor(crow, cols[order], values[order], (n, n), check_invariants=False)


def random_walk(transition: torch.Tensor, scores: torch.Tensor, steps: int) -> torch.Tensor:
    """``T^steps @ scores`` for (N, K) scores, one sparse product per step."""
    for _ in range(steps):
        scores = transition @ scores
    return scores


def with_background_score(cams: torch.Tensor, alpha: float) -> torch.Tensor:
    """(K, H, W) CAMs, K >= 1 -> (K + 1, H, W), background ``(1 - max CAM)^alpha`` first."""
    return torch.cat([(1 - cams.amax(dim=0, keepdim=True)).clamp(min=0) ** alpha, cams])


def walk_cams(cams: torch.Tensor, affinity: torch.Tensor, offsets: tuple[Offset, ...],
              settings: WalkSettings) -> torch.Tensor:
    """Refined (K, H, W) CAMs in [0, 1] of one image from its (K, H, W) CAMs and (P, h, w) affinities."""
    k, height, width = cams.shape
    if k == 0:
        return cams
    _, h, w = affinity.shape
    scores = F.adaptive_avg_pool2d(with_background_score(cams, settings.alpha)[None], (h, w))[0]
    transition = transition_matrix(affinity, offsets, settings.beta)
    walked = random_walk(transition, scores.reshape(k + 1, h * w).T, 2 ** settings.log_t)
    walked = F.interpolate(walked.T.reshape(1, k + 1, h, w), size=(height, width), mode="bilinear",
                           align_corners=False)[0]
    background, classes = walked[:1], walked[1:]
    return classes / (classes + background + _EPS)
