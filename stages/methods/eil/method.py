"""``eil``: the method class -- options, hooks, state; the round itself is ``explore.Explorer``."""
from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import Dataset

from stages.data.images import load_rgb
from stages.data.segmentation import SegmentationDataset, label_dir_source
from stages.data.transforms import AugmentConfig
from stages.errors import InputError
from stages.io.atomic import atomic_dir
from stages.io.label_png import IGNORE, label_path, read_label, write_label
from stages.methods.base import Method, TrainInputs
from stages.methods.ce import masked_cross_entropy
from stages.methods.eil.agent import SEARCHER_OPTIMIZERS, PolicyAgent
from stages.methods.eil.explore import POLICIES, REWARD_BASELINES, Explorer, RoundSettings
from stages.methods.eil.inference import ACTION_SPACES, RADIUS_UNITS, action_dim
from stages.methods.eil.replay import ReplayBuffer, Transitions
from stages.methods.eil.report import REPORT_SPLIT, quality_of, report_ids, write_label_maps, write_table
from stages.methods.eil.reward import REWARD_FEATURES, Rewarder, RewardSettings
from stages.models.segmenter import Segmenter, SegmenterSpec
from stages.runtime.hooks import Optimization, StepContext
from stages.runtime.rounds import RoundStore
from stages.runtime.settings import TrainSettings


def _on_cpu(state: Any) -> Any:
    """A (nested) state dict with every tensor on the CPU, to send to processes on other devices."""
    if isinstance(state, torch.Tensor):
        return state.cpu()
    if isinstance(state, dict):
        return {k: _on_cpu(v) for k, v in state.items()}
    if isinstance(state, (list, tuple)):
        return type(state)(_on_cpu(v) for v in state)
    return state


@dataclass
class EIL(Method):
    """Options: see the schema's `eil` block and docs/methods/eil.md."""

    policy: str = "searcher_assessor"
    action_space: str = "two"
    pretrain_steps: int = 120  # a multiple of explore_every: rounds at 120, 160, ... 280 of 300 steps
    explore_every: int = 40
    radii: list[float] = field(default_factory=lambda: [0.04, 0.08, 0.12, 0.16, 0.20])
    radius_unit: str = "fraction"  # of the image's longer side; or "px"
    ema_decay: float = 0.95
    delta: float = 10.0
    gamma: float = 0.9
    target_rate: float = 0.05
    noise_std: float = 0.1
    explore_random: float = 0.0  # share of the searcher's explored actions drawn uniformly instead
    reward_features: str = "round"  # or "updated": F' after a short decoder update on each map
    reward_steps: int = 3
    reward_lr: float = 0.1
    reward_baseline: str = "none"  # or replay_mean / round_mean: the assessor learns rewards less that mean
    policy_lr: float = 0.001
    searcher_optimizer: str = "sgd"  # the paper's SGD (momentum 0.9, weight decay 0.02, cosine); or "adam"
    transitions: int = 160
    policy_updates: int = 100
    policy_batch: int = 16
    replay_size: int = 2000
    policy_width: int = 32
    policy_blocks: int = 2
    state_grid: int = 16
    restrict_classes: bool = True
    show_images: int = 4

    name: ClassVar[str] = "eil"
    needs: ClassVar[frozenset[str]] = frozenset({"scribbles"})

    rounds_done: int = field(default=0, init=False)
    rows: list[dict[str, Any]] = field(default_factory=list, init=False)
    teacher: nn.Module | None = field(default=None, init=False, repr=False)
    agent: PolicyAgent | None = field(default=None, init=False, repr=False)
    inputs: TrainInputs | None = field(default=None, init=False, repr=False)
    aug: AugmentConfig | None = field(default=None, init=False, repr=False)
    seed: int = field(default=0, init=False)
    store: RoundStore | None = field(default=None, init=False, repr=False)
    replay: ReplayBuffer | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.policy not in POLICIES:
            raise InputError(f"eil: policy {self.policy!r} is not one of {', '.join(POLICIES)}")
        if self.action_space not in ACTION_SPACES:
            raise InputError(f"eil: action_space {self.action_space!r} is not one of {', '.join(ACTION_SPACES)}")
        every, pretrain = self.explore_every, self.pretrain_steps
        if every < 1 or pretrain < every or pretrain % every:
            raise InputError(f"eil: pretrain_steps ({self.pretrain_steps}) must be a positive multiple of "
                             f"explore_every ({self.explore_every}): rounds run every explore_every steps")
        if not self.radii or min(self.radii) <= 0:
            raise InputError(f"eil: radii must list one positive radius per round, got {self.radii}")
        if self.searcher_optimizer not in SEARCHER_OPTIMIZERS:
            raise InputError(f"eil: searcher_optimizer {self.searcher_optimizer!r} is not one of "
                             f"{', '.join(SEARCHER_OPTIMIZERS)}")
        if self.reward_features not in REWARD_FEATURES:
            raise InputError(f"eil: reward_features {self.reward_features!r} is not one of "
                             f"{', '.join(REWARD_FEATURES)}")
        if self.reward_baseline not in REWARD_BASELINES:
            raise InputError(f"eil: reward_baseline {self.reward_baseline!r} is not one of "
                             f"{', '.join(REWARD_BASELINES)}")
        if not 0.0 <= self.explore_random <= 1.0:
            raise InputError(f"eil: explore_random ({self.explore_random}) is a share of the explored actions, "
                             f"in [0, 1]")
        if self.radius_unit not in RADIUS_UNITS:
            raise InputError(f"eil: radius_unit {self.radius_unit!r} is not one of {', '.join(RADIUS_UNITS)}")
        if self.radius_unit == "fraction" and max(self.radii) > 1:
            raise InputError(f"eil: radii {self.radii} are fractions of the image's longer side (radius_unit: "
                             f"fraction), so at most 1; for pixels set radius_unit: px")

    @property
    def explores(self) -> bool:
        return self.policy != "none"

    @property
    def every_n_steps(self) -> int:
        return self.explore_every if self.explores else 0

    def options(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.init}

    # -- model, data, optimisers ---------------------------------------------------------------

    def build_model(self, spec: SegmenterSpec, inputs: TrainInputs | None) -> nn.Module:
        return Segmenter(spec)

    def build_dataset(self, inputs: TrainInputs, aug: AugmentConfig, seed: int) -> Dataset:
        self.inputs, self.aug, self.seed = inputs, aug, seed
        return self._dataset_on(inputs.scribbles)

    def _dataset_on(self, folder: Path) -> SegmentationDataset:
        ids = self.inputs.index.ids(self.inputs.split)
        return SegmentationDataset(self.inputs.index, self.inputs.split, label_dir_source(folder, ids),
                                   self.aug, self.seed)

    def configure_optimizers(self, model: nn.Module, settings: TrainSettings) -> list[Optimization]:
        """The segmenter's optimiser; the teacher starts as the model after its initialisation, and
        the agent keeps its own two optimisers (checkpointed through ``state_dict``)."""
        if self.explores:
            self.teacher = copy.deepcopy(model).requires_grad_(False).eval()
            classifier = model.decoder.classifier
            num_classes = classifier.out_channels
            state_channels = classifier.in_channels + 2 * num_classes + 1
            self.agent = PolicyAgent(state_channels, action_dim(self.action_space, num_classes), self.policy_width,
                                     self.policy_blocks, self.policy_lr, self.gamma, self.target_rate,
                                     self.searcher_optimizer, len(self.radii) * self.policy_updates)
            self.agent.to(next(model.parameters()).device)
        return super().configure_optimizers(model, settings)

    def _rounds(self, ctx: StepContext) -> RoundStore:
        if self.store is None:
            self.store = RoundStore(ctx.state_dir, {"method": self.name, **self.options()}, ctx.dist)
        return self.store

    def labels_dir(self, ctx: StepContext, r: int) -> Path:
        """The label maps after round r (0: the scribbles)."""
        return self.inputs.scribbles if r == 0 else self._rounds(ctx).round_dir(r) / "labels"

    def dataset(self, base: Dataset, ctx: StepContext) -> Dataset:
        return base if self.rounds_done == 0 else self._dataset_on(self.labels_dir(ctx, self.rounds_done))

    # -- training ------------------------------------------------------------------------------

    def training_step(self, net: nn.Module, batch: dict[str, torch.Tensor],
                      ctx: StepContext) -> dict[str, torch.Tensor]:
        label = batch["label"]
        return {"loss": masked_cross_entropy(net(batch["image"]), label),
                "labelled": (label != IGNORE).float().mean()}

    def after_step(self, model: nn.Module, ctx: StepContext) -> None:
        if self.teacher is None:
            return
        # BatchNorm statistics are averaged with the weights: the model's own statistics belong to
        # its weights, and on averaged weights they left the teacher far less confident.
        with torch.no_grad():
            for t, p in zip(self.teacher.parameters(), model.parameters()):
                t.lerp_(p, 1.0 - self.ema_decay)
            for t, b in zip(self.teacher.buffers(), model.buffers()):
                if t.is_floating_point():
                    t.lerp_(b, 1.0 - self.ema_decay)
                else:
                    t.copy_(b)

    def on_every_n_steps(self, model: nn.Module, ctx: StepContext) -> None:
        done = ctx.step + 1
        if done < self.pretrain_steps or self.rounds_done >= len(self.radii):
            return
        r = self.rounds_done + 1
        store = self._rounds(ctx)
        row = self._explore(ctx, r) if ctx.dist.is_main else None
        if ctx.dist.distributed:  # every process continues with rank 0's policy and row
            payload = [row, _on_cpu(self.agent.full_state()) if ctx.dist.is_main else None]
            dist.broadcast_object_list(payload, src=0)
            row = payload[0]
            self.agent.load_full_state(payload[1])
        store.finish(r, row)
        self.rows.append(row)
        self.rounds_done = r

    def transitions_path(self, ctx: StepContext, r: int) -> Path:
        return self._rounds(ctx).round_dir(r) / "transitions.pt"

    def _replay(self, ctx: StepContext, r: int) -> ReplayBuffer:
        """The replay buffer before round r: rebuilt from the rounds' files after a resume."""
        if self.replay is None:
            self.replay = ReplayBuffer(self.replay_size)
            for done in range(1, r):
                if self.transitions_path(ctx, done).is_file():
                    self.replay.add(Transitions.load(self.transitions_path(ctx, done)))
        return self.replay

    def _explore(self, ctx: StepContext, r: int) -> dict[str, Any]:
        index, ids = self.inputs.index, self.inputs.index.ids(self.inputs.split)
        settings = RoundSettings(self.policy, self.action_space, float(self.radii[r - 1]), self.radius_unit,
                                 self.noise_std, self.explore_random, self.transitions, self.policy_updates,
                                 self.policy_batch, self.state_grid, self.restrict_classes, self.reward_baseline)
        generator = torch.Generator().manual_seed(self.seed * 1009 + r)
        num_classes = self.teacher.decoder.classifier.out_channels
        rewarder = Rewarder(self.teacher.decoder, num_classes,
                            RewardSettings(self.reward_features, self.reward_steps, self.reward_lr, self.delta))
        explorer = Explorer(self.teacher, self.agent, settings, rewarder, num_classes,
                            self.agent.action_dim, generator, ctx.dist)
        current = self.labels_dir(ctx, r - 1)
        masked_ids = report_ids(index, ids)
        masked = set(masked_ids)

        def image(image_id: str):
            return load_rgb(index.image_path(image_id))

        def label(image_id: str):
            return read_label(label_path(current, image_id))

        def truth(image_id: str):  # reporting only: never reaches the policy or the segmenter
            return read_label(index.mask_path(image_id, REPORT_SPLIT)) if image_id in masked else None

        learnt, fresh = explorer.learn(ids, image, label, self._replay(ctx, r))
        final = self.labels_dir(ctx, r)
        with atomic_dir(final) as tmp:
            relabelled = explorer.relabel(ids, image, label, lambda i, m: write_label(label_path(tmp, i), m), truth)
        if fresh is not None:
            fresh.save(self.transitions_path(ctx, r))
        quality = quality_of(index, masked_ids, lambda i: read_label(label_path(final, i)))
        print(f"eil round {r} at step {ctx.step + 1}: radius {settings.radius:g} {settings.radius_unit}, "
              f"{100 * relabelled['adopted']:.0f}% of maps adopted, precision {quality['precision']:.3f}, "
              f"coverage {quality['coverage']:.3f}", flush=True)
        return {"round": r, "step": ctx.step + 1, "radius": settings.radius, **learnt, **relabelled, **quality}

    def on_train_end(self, model: nn.Module, ctx: StepContext) -> None:
        """rounds.csv/.png and the label maps of a few images across rounds, into ``ctx.output_dir``
        (made here from the state folder, which outlives a killed job's outputs)."""
        if not ctx.dist.is_main or ctx.output_dir is None:
            return
        index, ids = self.inputs.index, self.inputs.index.ids(self.inputs.split)
        shown = report_ids(index, ids)
        scribbles = quality_of(index, shown, lambda i: read_label(label_path(self.inputs.scribbles, i)))
        write_table([{"round": 0, "step": 0, **scribbles}, *self.rows], ctx.output_dir)
        folders = [self.labels_dir(ctx, r) for r in range(self.rounds_done + 1)]
        maps = [lambda i, folder=folder: read_label(label_path(folder, i)) for folder in folders]
        write_label_maps(index, shown[:self.show_images], maps, ctx.output_dir)

    # -- state ---------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {"rounds_done": self.rounds_done, "rows": self.rows}
        if self.explores:
            state.update(teacher=self.teacher.state_dict(), agent=self.agent.full_state())
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.rounds_done, self.rows = state["rounds_done"], list(state["rows"])
        if self.explores:
            self.teacher.load_state_dict(state["teacher"])
            self.agent.load_full_state(state["agent"])
