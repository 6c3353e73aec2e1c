"""Affinity labels: confident regions of the source CAMs, and the pairs they label.

Confident regions (IRN's ``conf_fg_thres`` / ``conf_bg_thres``): a pixel is foreground of the
strongest present class where the best CAM score is above ``fg``, background where it is at or
below ``bg``, and unknown (255) between. That is exactly a pseudo label at threshold
``(fg + bg) / 2`` with ignore band ``(fg - bg) / 2`` (``stages.labels.pseudo``), which is how it
is made here, dense CRF included. With the CRF on, the two CRF maps can disagree in more ways:
IRN keeps the high-threshold map's class wherever it is foreground, here every pixel on which the
maps disagree is unknown.

A pair is positive (affinity 1) when both pixels carry the same label, background pairs and
foreground pairs counted apart for the balanced loss, negative (affinity 0) when the labels
differ, and left out when either pixel is unknown or off the grid.
"""
from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from stages.data.index import DatasetIndex
from stages.errors import InputError
from stages.io.atomic import write_text
from stages.io.label_png import IGNORE
from stages.irn.pairs import Offset, shifted
from stages.labels.crf import CRFParams
from stages.labels.pseudo import PseudoLabelSettings, generate_pseudo_labels
from stages.runtime.distributed import DistContext, barrier


@dataclass(frozen=True)
class ConfidenceThresholds:
    """``relative``: ``fg`` and ``bg`` are multiples of the source CAM file's best threshold (its
    own sweep), so they follow CAMs that are stronger or weaker overall; ``absolute``: CAM scores."""

    mode: Literal["relative", "absolute"]
    fg: float
    bg: float

    def resolve(self, best: float) -> tuple[float, float]:
        """(bg, fg) as CAM scores, given the source file's best threshold."""
        if not 0 <= self.bg < self.fg:
            raise InputError(f"IRN needs 0 <= bg_threshold < fg_threshold, got {self.bg} and {self.fg}")
        if self.mode == "absolute":
            return self.bg, self.fg
        if best <= 0:
            raise InputError(f"the source CAMs' best threshold is {best}, so relative confidence thresholds "
                             f"would all be 0; set thresholds: absolute in the irn refinement")
        return self.bg * best, self.fg * best


def confident_label_settings(bg: float, fg: float, crf: CRFParams | None, num_classes: int) -> PseudoLabelSettings:
    """The pseudo-label settings whose ignore band is the unknown region between ``bg`` and ``fg``."""
    return PseudoLabelSettings(threshold=(fg + bg) / 2, ignore_band=(fg - bg) / 2, crf=crf, num_classes=num_classes)


def write_confident_labels(index: DatasetIndex, cams: str | os.PathLike, split: str,
                           settings: PseudoLabelSettings, state_dir: Path, meta: dict[str, Any],
                           workers: int, ctx: DistContext) -> Path:
    """``state_dir/labels/<id>.png`` for every image of ``split``, kept across kills.

    ``labels.json`` records the ``meta`` (source file, thresholds, CRF) the folder was made with and
    is written after it: labels made with other settings, or never finished, are made again.
    """
    folder, stamp = state_dir / "labels", state_dir / "labels.json"
    meta = json.loads(json.dumps(meta))  # as JSON reads it back
    if ctx.is_main:
        if not (folder.is_dir() and stamp.is_file() and json.loads(stamp.read_text()) == meta):
            stamp.unlink(missing_ok=True)
            print(f"confident regions of {split} -> {folder}", file=sys.stderr)
            generate_pseudo_labels(index, cams, split, settings, folder, workers)
            write_text(stamp, json.dumps(meta, indent=1, sort_keys=True) + "\n")
        else:
            print(f"confident regions already in {folder}", file=sys.stderr)
    barrier(ctx)
    return folder


@dataclass(frozen=True)
class PairLabels:
    """Boolean (B, P, h, w) maps over the pairs of ``pairs.half_offsets``."""

    bg_pos: torch.Tensor  # both pixels background
    fg_pos: torch.Tensor  # both pixels the same foreground class
    neg: torch.Tensor  # two different labels, neither unknown


def pair_labels(label: torch.Tensor, offsets: tuple[Offset, ...]) -> PairLabels:
    """The pairs' labels from a (B, h, w) label map at the feature grid (255 = unknown)."""
    here = label.unsqueeze(1)
    there = torch.stack([shifted(label, o, IGNORE) for o in offsets], dim=1)
    both = (here != IGNORE) & (there != IGNORE)
    same = both & (here == there)
    return PairLabels(bg_pos=same & (here == 0), fg_pos=same & (here != 0), neg=both & (here != there))
