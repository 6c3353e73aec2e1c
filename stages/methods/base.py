"""The method interface: what a segmenter training method provides (the registry lists them by name).

A method is one module with a dataclass whose fields are its options. It says what it reads from
the shared cache (``needs``), which model it trains, which dataset feeds it, and how it trains
through the loop's hooks (``stages.runtime.hooks.TrainHooks``: the step, and where it needs them
its own optimisers, state, per-step updates and callbacks). The loop, devices, checkpoints and
DDP stay in stages.runtime.trainer, so a new method is only its own idea.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from torch import nn
from torch.utils.data import Dataset

from stages.data.index import DatasetIndex
from stages.data.transforms import AugmentConfig
from stages.models.segmenter import SegmenterSpec, init_backbone_from_cam
from stages.runtime.hooks import TrainHooks


@dataclass(frozen=True)
class TrainInputs:
    """The data set and the cache artifacts train_seg was given; a method reads what it needs.

    Ground-truth masks are reachable through ``index`` (``mask_path``); a method that reads them
    says so in ``needs`` ("gt_masks"), and its outputs are labelled oracle results.
    """

    index: DatasetIndex
    split: str
    pseudo_labels: Path | None = None
    cam_checkpoint: Path | None = None
    scribbles: Path | None = None  # folder of <id>.png scribble maps (class on strokes, 255 elsewhere)


# What a method may list in ``needs``, and the train_seg flag that provides each.
NEEDS = {"pseudo_labels": "--pseudo-labels DIR", "cam_checkpoint": "--cam-checkpoint model.pt",
         "scribbles": "--scribbles DIR", "gt_masks": "an index with masks for the split"}


class Method(TrainHooks):
    """A training method: its options are the fields of the subclass (a dataclass).

    ``build_model`` returns a module with ``.backbone`` (timm features model),
    ``param_groups(head_lr_mult)`` and a forward that maps images to per-pixel logits at input
    size -- that forward is all evaluation uses, so training-only heads stay internal. It sees the
    method's inputs, e.g. to start a branch from the CAM network; ``None`` when a saved model is
    rebuilt for evaluation, whose weights then replace whatever the model started from.
    """

    name: ClassVar[str]
    needs: ClassVar[frozenset[str]] = frozenset()

    def build_model(self, spec: SegmenterSpec, inputs: TrainInputs | None) -> nn.Module:
        raise NotImplementedError

    def build_dataset(self, inputs: TrainInputs, aug: AugmentConfig, seed: int) -> Dataset:
        raise NotImplementedError

    def init_from_cam(self, model: nn.Module, spec: SegmenterSpec, cam_path: str) -> None:
        """``seg.init: cam``: the backbone from the CAM network; a method whose network has more of
        it (a CAM head of its own) extends this."""
        init_backbone_from_cam(model.backbone, spec.backbone, cam_path)
