"""``ugrl``: uncertainty-guided reliable learning of the segmenter (AAAI-26), on an AFA-style network.

Per step (see docs/methods/ugrl.md for the reconstructed choices):

- PUM: class vectors from affinity-propagated CAMs, batch prototypes, EMA global prototypes,
  class uncertainty ``u_c`` (uncertainty.py; the prototypes are method state, all-reduced).
- L_cls: multi-label soft margin on the max-pooled CAMs, class c weighted by ``exp(-u_c / alpha)``.
- After ``warmup_steps`` (classification only before): L_seg, cross-entropy on the targets
  weighted per pixel by ``exp(-u_y / beta)``; the reliable pool (K% lowest-uncertainty labelled
  pixels of each class per image, ranked by their margin to the decoder-space prototypes); L_contrast,
  supervised InfoNCE in the pool; L_aux, the affinity loss on the pool's pairs.
  ``loss = l0 L_cls + l1 L_seg + l2 L_contrast + l3 L_aux`` (the paper's sum has no l0: 1 by default).
- Diagnostics (diagnostics.py, report.py): a sample of labelled pixels with ground truth (train
  images with masks, reporting only), to show whether the ranking picks the right labels.

Targets: ``cached`` reads the variant's pseudo labels (the DAG's default: the backbone starts
from the CAM network through ``seg.init: cam``); ``online`` is the paper's single-stage mode, the
network's own PAR-refined CAMs (par.py) with the image-level labels of the index.

Every switch of the paper's ablation is an option, so its table and K sweep run from config.
Optimiser: the ``train`` block's, like every method (the paper's AdamW recipe is a per-variant
``seg.train`` override in workflow/configs/ugrl_voc_gpu.yaml); heads get ``head_lr_mult``.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from functools import partial
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from stages.data.segmentation import label_dir_source
from stages.data.transforms import AugmentConfig
from stages.errors import InputError
from stages.io.label_png import IGNORE
from stages.methods.base import Method, TrainInputs
from stages.methods.ce import masked_cross_entropy
from stages.methods.ugrl.contrast import affinity_loss, reliable_pool, sample_pool, supervised_infonce
from stages.methods.ugrl.data import UGRLDataset
from stages.methods.ugrl.diagnostics import SAMPLE_COLUMNS, pixel_sample
from stages.methods.ugrl.model import UGRLNet
from stages.methods.ugrl.par import cam_targets
from stages.methods.ugrl.report import write_outputs
from stages.methods.ugrl.uncertainty import (
    PixelPrototypes,
    PrototypeBank,
    class_scores,
    class_vectors,
    propagate,
    uncertainty_weights,
)
from stages.models.segmenter import SegmenterSpec
from stages.runtime.distributed import all_reduce_sum
from stages.runtime.hooks import StepContext

TARGETS = ("cached", "online")
POOLS = ("uncertainty", "random", "oracle")
CAM_HEADS = ("cam", "random", "zero")


def weighted_cross_entropy(logits: torch.Tensor, label: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Per-pixel weighted CE summed over labelled pixels, divided by their number (not by the
    weights' sum: a batch of uncertain labels should teach less, not be scaled back up)."""
    ce = F.cross_entropy(logits.float(), label, ignore_index=IGNORE, reduction="none")
    return (ce * weight).sum() / (label != IGNORE).sum().clamp(min=1)


def resize_nearest(x: torch.Tensor, size: torch.Size) -> torch.Tensor:
    """A label-like map (B, H, W) at ``size`` by nearest neighbour, keeping its dtype."""
    return F.interpolate(x[:, None].float(), size=size, mode="nearest")[:, 0].to(x.dtype)


@dataclass
class UGRL(Method):
    """Options: the switches of the paper's ablation and its hyperparameters (defaults: the schema)."""

    targets: str = "cached"
    class_uncertainty: bool = True
    pixel_uncertainty: bool = True
    contrastive: bool = True
    pool: str = "uncertainty"  # "random": the same quota drawn at random; "oracle": right labels first (ORACLE)
    pool_per_class: bool = True  # K% of each class's pixels, not K% of the image's in one ranking
    normalise_weights: bool = True  # L_seg's weights divided by their mean over the batch's labelled pixels
    affinity_on_pool: bool = True
    cam_head: str = "zero"  # class logits start at 0; "cam" copies the CAM network's classifier; "random"
    k_percent: float = 35.0
    alpha: float = 0.5
    beta: float = 0.5
    tau: float = 0.1
    eta: float = 0.99
    l0: float = 1.0  # weight of L_cls: below 1, the classification pulls less on the shared backbone
    l1: float = 1.0
    l2: float = 0.1
    l3: float = 0.1
    warmup_steps: int = 0
    d_cls: int = 1024
    d_seg: int = 512
    contrast_samples: int = 1024

    name: ClassVar[str] = "ugrl"
    # What every configuration needs (nothing); a ``cached`` instance adds pseudo_labels in
    # __post_init__, and the schema requires the key only then.
    needs: ClassVar[frozenset[str]] = frozenset()
    find_unused_parameters: ClassVar[bool] = True  # decoder and heads idle during the warm-up

    bank: PrototypeBank | None = field(default=None, init=False, repr=False)
    pixels: PixelPrototypes | None = field(default=None, init=False, repr=False)
    samples: list[torch.Tensor] = field(default_factory=list, init=False, repr=False)
    history: list[dict[str, Any]] = field(default_factory=list, init=False, repr=False)
    classes: list[str] = field(default_factory=list, init=False, repr=False)
    pending: deque = field(default_factory=deque, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.targets not in TARGETS:
            raise InputError(f"ugrl: targets must be one of {', '.join(TARGETS)}, got {self.targets!r}")
        if not 0 < self.k_percent <= 100:
            raise InputError(f"ugrl: k_percent must be in (0, 100], got {self.k_percent}")
        for key in ("alpha", "beta", "tau"):
            if getattr(self, key) <= 0:
                raise InputError(f"ugrl: {key} must be > 0, got {getattr(self, key)}")
        if self.contrast_samples < 2:
            raise InputError(f"ugrl: contrast_samples must be >= 2, got {self.contrast_samples}")
        if not 0 <= self.eta < 1:
            raise InputError(f"ugrl: eta must be in [0, 1), got {self.eta}")
        if self.pool not in POOLS:
            raise InputError(f"ugrl: pool must be one of {', '.join(POOLS)}, got {self.pool!r}")
        if self.cam_head not in CAM_HEADS:
            raise InputError(f"ugrl: cam_head must be one of {', '.join(CAM_HEADS)}, got {self.cam_head!r}")
        if self.targets == "cached":
            self.needs = frozenset({"pseudo_labels"})
        if self.pool == "oracle":
            self.needs = self.needs | {"gt_masks"}

    def build_model(self, spec: SegmenterSpec, inputs: TrainInputs | None) -> nn.Module:
        model = UGRLNet(spec, self.d_seg)
        if self.cam_head == "zero":  # class logits start at 0: no large first gradients into the backbone
            nn.init.zeros_(model.classifier.weight)
        self.bank = PrototypeBank(spec.num_classes, model.backbone.feature_info.channels()[-1], self.d_cls, self.eta)
        self.pixels = PixelPrototypes(spec.num_classes, model.decoder.classifier.in_channels, self.eta)
        return model

    def init_from_cam(self, model: nn.Module, spec: SegmenterSpec, cam_path: str) -> None:
        super().init_from_cam(model, spec, cam_path)
        if self.cam_head == "cam":
            model.init_cam_head(cam_path)

    def build_dataset(self, inputs: TrainInputs, aug: AugmentConfig, seed: int) -> Dataset:
        self.classes = list(inputs.index.classes)
        labels = None
        if self.targets == "cached":
            labels = label_dir_source(inputs.pseudo_labels, inputs.index.ids(inputs.split))
        return UGRLDataset(inputs.index, inputs.split, labels, aug, seed)

    def training_step(self, net: nn.Module, batch: dict[str, torch.Tensor],
                      ctx: StepContext) -> dict[str, torch.Tensor]:
        bank, pixels = self.bank.to(batch["image"].device), self.pixels.to(batch["image"].device)
        segmenting = ctx.step >= self.warmup_steps
        picked: dict[str, torch.Tensor] = {}
        present = torch.cat([torch.ones_like(batch["labels"][:, :1]), batch["labels"]], dim=1) > 0
        out = net(batch["image"], train=True,
                  pick=partial(self.pick, batch, present, picked) if segmenting else None)
        with torch.no_grad():
            scores = propagate(class_scores(out["cams"], present), out["affinity"])
            sums = bank.batch_sums(class_vectors(out["features"], scores), present, ctx.dist)
            u = bank.uncertainty(sums)
            # the decoder learns only once segmenting: its prototypes start then
            pixel_sums = pixels.batch_sums(out["decoded"], picked["small"], ctx.dist) if segmenting else None
        class_weight = uncertainty_weights(u[1:], self.alpha) if self.class_uncertainty else None
        l_cls = F.multilabel_soft_margin_loss(out["class_logits"].float(), batch["labels"], weight=class_weight)
        zero = l_cls.new_zeros(())
        terms = {"cls": l_cls, "seg": zero, "contrast": zero, "aux": zero,
                 "u_mean": u[u > 0].mean() if (u > 0).any() else zero}
        counts, sample = torch.zeros(4, device=u.device), None
        if segmenting:
            seg_terms, counts, sample = self.segmentation_losses(out, picked, batch["gt"], u)
            terms.update(seg_terms)
        self.pending.append((sums, pixel_sums, counts, sample))
        loss = self.l0 * l_cls + self.l1 * terms["seg"] + self.l2 * terms["contrast"] + self.l3 * terms["aux"]
        return {"loss": loss, **terms}

    def pick(self, batch: dict[str, torch.Tensor], present: torch.Tensor, picked: dict[str, torch.Tensor],
             out: dict[str, torch.Tensor], grid: torch.Size) -> torch.Tensor:
        """Called inside the forward (the pool depends on its features): the step's targets, the
        pool on the decoder grid, and the pool pixels that get embeddings (none without L_contrast)."""
        label = batch["label"]
        if self.targets == "online":
            label = torch.where(label == IGNORE, IGNORE, cam_targets(batch["image"], out["cams"].detach(),
                                                                     batch["labels"]))
        small = resize_nearest(label, grid)
        with torch.no_grad():
            certainty = self.pixels.certainty(out["decoded"], small, present)
            if self.pool == "uncertainty":
                # a class without a prototype yet (the first steps): its pixels in random order
                key = torch.where(torch.isfinite(certainty), -certainty, 10 + torch.rand_like(certainty))
            elif self.pool == "oracle":  # ORACLE: labels that agree with ground truth first
                key = (small != resize_nearest(batch["gt"], grid)).float() + torch.rand_like(certainty) / 2
            else:
                key = torch.rand_like(certainty)
            pool = reliable_pool(key, small, self.k_percent, self.pool_per_class)
        chosen = sample_pool(pool, self.contrast_samples) if self.contrastive else small.new_zeros(0)
        picked.update(label=label, small=small, pool=pool, chosen=chosen, certainty=certainty)
        return chosen

    def segmentation_losses(self, out: dict[str, torch.Tensor], picked: dict[str, torch.Tensor], gt: torch.Tensor,
                            u: torch.Tensor) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
        """L_seg, L_contrast, L_aux, the pool's GT counts (pool right, pool known, labelled right,
        labelled known) and the diagnostics' pixel sample for one micro-batch, from what ``pick`` chose."""
        label, small, pool = picked["label"], picked["small"], picked["pool"]
        if self.pixel_uncertainty:
            weight = uncertainty_weights(u, self.beta)[label.clamp(max=len(u) - 1)]
            if self.normalise_weights:  # move weight between pixels, not the step size
                weight = weight / weight[label != IGNORE].mean().clamp(min=1e-6)
            l_seg = weighted_cross_entropy(out["seg_logits"], label, weight)
        else:
            l_seg = masked_cross_entropy(out["seg_logits"], label)
        l_con = l_seg.new_zeros(())
        if self.contrastive:
            l_con = supervised_infonce(out["embeddings"], small.flatten()[picked["chosen"]], self.tau)
        cam_grid = out["features"].shape[-2:]
        include = resize_nearest(pool, cam_grid)
        if not self.affinity_on_pool:
            include = torch.ones_like(include)
        l_aux = affinity_loss(out["affinity"], resize_nearest(label, cam_grid).flatten(1), include.flatten(1))
        with torch.no_grad():
            truth = resize_nearest(gt, small.shape[-2:])
            known, right = truth != IGNORE, small == truth
            labelled = small != IGNORE
            counts = torch.stack([(pool & known & right).sum(), (pool & known).sum(),
                                  (labelled & known & right).sum(), (labelled & known).sum()]).float()
            sample = pixel_sample(small, picked["certainty"], right, pool, labelled & known)
        return {"seg": l_seg, "contrast": l_con, "aux": l_aux}, counts, sample

    def after_step(self, model: nn.Module, ctx: StepContext) -> None:
        """EMA of the prototypes with the step's batch prototypes, and the step's report record.

        Only the last ``accumulation`` micro-batches belong to this step: those of an attempt the
        loop skipped (non-finite loss) came before them and are dropped.
        """
        step = list(self.pending)[-ctx.accumulation:]
        self.pending.clear()
        sums = sum(s for s, *_ in step)
        counts = all_reduce_sum(sum(c for _, _, c, _ in step), ctx.dist)
        u = self.bank.uncertainty(sums)
        shown = self.bank.seen & (sums.norm(dim=-1) > 0)
        self.bank.update(sums)
        if step[0][1] is not None:
            self.pixels.update(sum(p[0] for _, p, _, _ in step), sum(p[1] for _, p, _, _ in step) / len(step))
            self.samples.extend(s.cpu() for *_, s in step)
        self.history.append({"step": ctx.step + 1, "counts": counts.tolist(),
                             "u": torch.where(shown, u, torch.full_like(u, float("nan"))).tolist()})

    def on_train_end(self, model: nn.Module, ctx: StepContext) -> None:
        if ctx.dist.is_main and ctx.output_dir is not None and self.history:
            samples = torch.cat(self.samples) if self.samples else torch.zeros(0, len(SAMPLE_COLUMNS))
            write_outputs(self.history, self.classes, ctx.output_dir, samples.float().numpy(),
                          self.pixels.prototypes().cpu().numpy(), oracle=self.pool == "oracle")

    def state_dict(self) -> dict[str, Any]:
        return {"bank": self.bank.state_dict(), "pixels": self.pixels.state_dict(), "history": list(self.history),
                "samples": torch.cat(self.samples) if self.samples else None}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.bank.load_state_dict(state["bank"])
        self.pixels.load_state_dict(state["pixels"])
        self.history = list(state["history"])
        self.samples = [state["samples"]] if state["samples"] is not None else []
