"""``rss``: the segmenter trained from rewards (RSS, "Reward in Semantic Segmentation").

Source: the paper's method section (``../shared/papers/rss-paper.txt``; no public code). The
segmenter's per-pixel softmax is the policy. Each step, for every PSR scale, ``samples`` action
maps are drawn per image (``sampling``), a reward source scores them (``rewards``), the rewards
become advantages (``advantages``) and the loss is the policy gradient ``-A * log pi(a)``.

- ``reward.level: pixel``: one reward per position (1 where the action equals the reference);
  at a coarse PSR scale a cell's reward is the mean of its pixels' rewards. Advantages are the
  rewards normalised over the group (all samples, images and positions of the scale; with
  ``sync_an`` all processes: SyncAN).
- ``reward.level: image``: one reward per sampled map. Without PSD every position of a map gets
  the map's normalised advantage (the paper's naive pipeline). With ``psd`` the advantage of map
  n is ``r_n - r_partner`` on the positions where it differs from its partner map, 0 elsewhere.
- PSR: ``psr_scales`` lists the action grids as fractions of the crop side: ``[1.0]`` samples at
  full resolution only, ``[0.125]`` on one coarse grid, ``[1.0, 0.25, 0.125]`` on all three.
- Cold start is the workflow's ``seg.init`` (``variant:ce`` by default in the configs, the CAM
  backbone, or a model file); ``last_layer_lr_factor`` multiplies the learning rate of the
  decoder's final classifier over the decoder's own (``lr x head_lr_mult``), so 1 trains like ce.

Loss averaging (this project's choice): per scale, the mean of ``-A * log pi(a)`` over every
valid position of every sampled map of the micro-batch (positions where PSD's two maps agree
count, with advantage 0, so the loss shrinks as the samples converge); scales weigh equally
(the mean over scales). With gradient accumulation each micro-batch is its own group.

Reconstructed (the paper does not give them; options, defaults in the config schema): N = 4
samples, the PSR scales, the cell rule (``sampling``), normalising image-level rewards over the
whole group, PSD's pairing (map n with map n + 1 mod N) and its raw, unnormalised differences,
the loss averaging above, and the last-layer factor being relative to the decoder's rate.

What a run shows beyond mIoU, every step in train_metrics.csv: per PSR scale the reward's mean and
spread (``reward_s<scale>``, ``reward_std_s<scale>``) and the advantages' (``adv_mean_s<scale>``,
``adv_std_s<scale>``), and ``top_class_share``, the share of the batch's pixels whose most likely
class is the most frequent one (near 1: the policy collapsed to one class). ``rss_curves.png`` in
the variant's outputs plots them, titled with the variant's name (an ORACLE row, trained on
``pseudo_labels: gt``, says so in its name); the summary's curves show the loss and rewards.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import nn
from torch.utils.data import Dataset

from stages.data.transforms import AugmentConfig
from stages.errors import InputError
from stages.methods.base import Method, TrainInputs
from stages.methods.rss.advantages import (
    broadcast_image_advantages,
    class_balanced_advantages,
    normalised_advantages,
    psd_advantages,
)
from stages.methods.rss.dataset import reward_dataset
from stages.methods.rss.rewards import RewardBatch, RewardSource, RewardSpec, make_reward_source
from stages.methods.rss.sampling import cell_classes, grid_size, pool_cells, sample_actions, upsample_cells
from stages.models.segmenter import Segmenter, SegmenterSpec
from stages.reporting.figures import new_figure, save_png
from stages.runtime.distributed import DistContext, all_reduce_sum
from stages.runtime.hooks import Optimization, StepContext
from stages.runtime.optim import build_optimizer, poly_schedule
from stages.runtime.settings import TrainSettings

if TYPE_CHECKING:
    from matplotlib.figure import Figure


@dataclass
class ScaleResult:
    """One PSR scale of one micro-batch: its loss and what the curves show."""

    loss: torch.Tensor
    reward_mean: torch.Tensor
    reward_std: torch.Tensor
    advantage_mean: torch.Tensor
    advantage_std: torch.Tensor

    def terms(self, scale: float) -> dict[str, torch.Tensor]:
        return {f"reward_s{scale:g}": self.reward_mean, f"reward_std_s{scale:g}": self.reward_std,
                f"adv_mean_s{scale:g}": self.advantage_mean, f"adv_std_s{scale:g}": self.advantage_std}


def top_class_share(probs: torch.Tensor) -> torch.Tensor:
    """Share of the pixels whose most likely class is the batch's most frequent one."""
    counts = torch.bincount(probs.detach().argmax(1).flatten(), minlength=probs.shape[1])
    return counts.max() / counts.sum()


def masked_mean_std(x: torch.Tensor, valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    v = valid.float()
    count = v.sum().clamp_min(1)
    mean = (x.detach() * v).sum() / count
    return mean, (((x.detach() - mean) ** 2 * v).sum() / count).sqrt()


@dataclass
class RSS(Method):
    samples: int = 4
    reward: dict[str, Any] = field(default_factory=dict)  # RewardSpec's fields; missing keys default
    psr_scales: list[float] = field(default_factory=lambda: [1.0])
    psd: bool = False
    sync_an: bool = True
    last_layer_lr_factor: float = 1.0

    name: ClassVar[str] = "rss"
    needs: ClassVar[frozenset[str]] = frozenset({"pseudo_labels"})

    spec: RewardSpec = field(init=False)
    source: RewardSource | None = field(default=None, init=False, repr=False)
    history: list[dict[str, float]] = field(default_factory=list, init=False, repr=False)
    pending: list[dict[str, float]] = field(default_factory=list, init=False, repr=False)

    def __post_init__(self) -> None:
        self.spec = RewardSpec.from_options(self.reward)
        if self.samples < 1:
            raise InputError(f"rss: samples must be >= 1, got {self.samples}")
        if not self.psr_scales or any(not 0 < s <= 1 for s in self.psr_scales):
            raise InputError(f"rss: psr_scales must be fractions in (0, 1], got {self.psr_scales}")
        if len(set(self.psr_scales)) != len(self.psr_scales):
            raise InputError(f"rss: psr_scales lists a scale twice: {self.psr_scales}")
        if self.psd and (self.spec.level != "image" or self.samples < 2):
            raise InputError("rss: psd compares image-level rewards of pairs of maps: it needs "
                             "reward.level image and samples >= 2")
        if self.last_layer_lr_factor <= 0:
            raise InputError(f"rss: last_layer_lr_factor must be > 0, got {self.last_layer_lr_factor}")

    # -- model, data, optimiser ------------------------------------------------------------
    def build_model(self, spec: SegmenterSpec, inputs: TrainInputs | None) -> nn.Module:
        return Segmenter(spec)

    def build_dataset(self, inputs: TrainInputs, aug: AugmentConfig, seed: int) -> Dataset:
        self.source = make_reward_source(self.spec, inputs.index.num_classes)
        return reward_dataset(inputs.index, inputs.split, inputs.pseudo_labels, aug, seed)

    def configure_optimizers(self, model: nn.Module, settings: TrainSettings) -> list[Optimization]:
        """ce's groups, with the decoder's final classifier split off at ``last_layer_lr_factor``."""
        classifier = getattr(model.decoder, "classifier", None)
        if not isinstance(classifier, nn.Module):
            raise InputError(f"rss: decoder {type(model.decoder).__name__} has no `classifier` layer "
                             f"for last_layer_lr_factor")
        last = {id(p) for p in classifier.parameters()}
        backbone, decoder = model.param_groups(settings.head_lr_mult)
        head = decoder.get("lr_mult", 1.0)
        groups = [backbone,
                  {**decoder, "params": [p for p in decoder["params"] if id(p) not in last]},
                  {"params": list(classifier.parameters()), "lr_mult": head * self.last_layer_lr_factor}]
        optimizer = build_optimizer(settings.optimizer, groups, settings.lr, settings.weight_decay)
        return [Optimization(optimizer, poly_schedule(optimizer, settings.steps))]

    # -- the step --------------------------------------------------------------------------
    def scale_step(self, probs: torch.Tensor, batch: RewardBatch, scale: float,
                   dist: DistContext | None) -> ScaleResult:
        """Sample, reward and weigh the log-probabilities at one PSR scale."""
        size = tuple(probs.shape[-2:])
        grid = grid_size(size, scale)
        actions, log_probs = sample_actions(pool_cells(probs, grid), self.samples)
        maps = upsample_cells(actions, size)
        if self.spec.level == "pixel":
            rewards, valid = self.source.pixel(maps, batch)
            share = pool_cells(valid.float(), grid)
            rewards = pool_cells(rewards * valid, grid) / share.clamp_min(1e-12)
            valid = share > 0
            reward_valid = valid
            if self.spec.balance:
                classes = cell_classes(batch.reference, grid, probs.shape[1])
                advantages, weight = class_balanced_advantages(rewards, valid, classes, probs.shape[1], dist,
                                                               self.sync_an, self.spec.balance_power)
            else:
                advantages, weight = normalised_advantages(rewards, valid, dist, self.sync_an), valid.float()
        else:
            rewards, reward_valid = self.source.image(maps, batch)
            if self.psd:
                advantages = psd_advantages(actions, rewards, reward_valid)
            else:
                advantages = broadcast_image_advantages(
                    normalised_advantages(rewards, reward_valid, dist, self.sync_an), grid)
            valid = reward_valid[..., None, None].expand_as(actions)
            weight = valid.float()
        loss = -(advantages * log_probs * weight).sum() / weight.sum().clamp_min(1)
        return ScaleResult(loss, *masked_mean_std(rewards, reward_valid), *masked_mean_std(advantages, valid))

    def training_step(self, net: nn.Module, batch: dict[str, Any], ctx: StepContext) -> dict[str, torch.Tensor]:
        probs = net(batch["image"]).float().softmax(1)
        rewards = RewardBatch(batch["label"], batch["image"], batch["tags"], list(batch["id"]))
        results = {s: self.scale_step(probs, rewards, s, ctx.dist) for s in self.psr_scales}
        terms = {"loss": torch.stack([r.loss for r in results.values()]).mean(),
                 "top_class_share": top_class_share(probs)}
        for scale, result in results.items():
            terms.update(result.terms(scale))
        self.pending.append({k: float(v) for k, v in terms.items() if k != "loss"})
        return terms

    # -- curves: the same on every process, kept in checkpoints ----------------------------
    def after_step(self, model: nn.Module, ctx: StepContext) -> None:
        """One point per optimiser step: the micro-batches' mean, averaged over processes."""
        keys = list(self.pending[0])
        local = torch.tensor([[p[k] for k in keys] for p in self.pending], dtype=torch.float64).mean(0)
        mean = all_reduce_sum(local.to(ctx.dist.device), ctx.dist).cpu() / ctx.dist.world_size
        self.history.append({"step": ctx.step + 1, **dict(zip(keys, mean.tolist()))})
        self.pending = []

    def on_train_end(self, model: nn.Module, ctx: StepContext) -> None:
        if ctx.dist.is_main and ctx.output_dir is not None and self.history:
            save_png(self.plot_curves(ctx.output_dir.parent.name), ctx.output_dir / "rss_curves.png")

    def plot_curves(self, variant: str) -> Figure:
        """Per PSR scale the reward (mean, band of one std) and the advantages' mean and spread, and
        the share of the top class, over the optimiser steps."""
        steps = [h["step"] for h in self.history]
        fig = new_figure(figsize=(14, 3.6), layout="constrained")
        reward_ax, advantage_ax, share_ax = fig.subplots(1, 3)
        for k, scale in enumerate(self.psr_scales):
            mean, std = (torch.tensor([h[f"{key}_s{scale:g}"] for h in self.history])
                         for key in ("reward", "reward_std"))
            reward_ax.plot(steps, mean, color=f"C{k}", label=f"scale {scale:g}")
            reward_ax.fill_between(steps, mean - std, mean + std, color=f"C{k}", alpha=0.15)
            advantage_ax.plot(steps, [h[f"adv_std_s{scale:g}"] for h in self.history], color=f"C{k}",
                              label=f"std, scale {scale:g}")
            advantage_ax.plot(steps, [h[f"adv_mean_s{scale:g}"] for h in self.history], color=f"C{k}",
                              linestyle=":", label=f"mean, scale {scale:g}")
        unit = "position" if self.spec.level == "pixel" else "map"
        reward_ax.set(xlabel="step", ylabel=f"reward per {unit} (band: one std)", title="reward")
        advantage_ax.set(xlabel="step", ylabel="advantage", title="advantage, PSD (r1 - r2 where maps differ)"
                         if self.psd else "advantage, normalised")
        share_ax.plot(steps, [h["top_class_share"] for h in self.history], color="C3")
        share_ax.set(xlabel="step", ylabel="share of the batch's pixels", ylim=(0, 1.02),
                     title="the most predicted class (1: collapsed)")
        reward_ax.legend(fontsize="small")
        advantage_ax.legend(fontsize="x-small")
        fig.suptitle(f"{variant} (RSS): reward {self.spec.describe()}; N = {self.samples}, PSR {self.psr_scales}, "
                     f"PSD {'on' if self.psd else 'off'}")
        return fig

    def state_dict(self) -> dict[str, Any]:
        return {"history": self.history}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.history = list(state["history"])
