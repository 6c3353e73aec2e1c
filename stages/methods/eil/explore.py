"""One exploration round: learn the policy on transitions, then infer and adopt new labels.

The state of an image is what the EMA teacher sees (paper: s = (F, P, M)): its decoder features
(L2-normalised per pixel), its class probabilities and the current label map as class fractions
plus an "unlabelled" fraction, all pooled to a ``grid`` x ``grid`` tensor (reconstructed: the
paper does not give its state encoding).

Phase 1 (policy learning, policies with an assessor): ``transitions`` images drawn at random,
each explored once: the action is the searcher's plus Gaussian noise (``noise_std``), or uniform
random for the random policies; H(M, a) gives M'; the reward is ``V(M', F') - V(M, F)`` as
``reward.Rewarder`` estimates it, and the next state s' = (F, P, M'). The transitions join a
replay buffer kept across rounds (``replay``), and ``policy_updates`` DDPG updates run on
mini-batches of ``policy_batch`` drawn from it. With ``reward_baseline`` (beyond the paper) the
assessor learns from each reward less the buffer's mean reward (``replay_mean``) or this round's
(``round_mean``), so Q > 0 reads "better than those proposals" rather than "raises V", which on
the round's features few additions do (docs/methods/eil.md).

Phase 2 (labelling, every training image): the searcher's action without noise (or a random
one), M' = H(M, a), adopted only where the assessor scores Q(s, a) > 0 (paper Eq. 13); the
``random`` policy adopts every M'. Images with a mask (reporting only) are also measured
(``diagnostics``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from stages.data.canvas import SIZE_DIVISOR, grouped_batches, pad_to, padded_size
from stages.data.tensors import to_tensor
from stages.io.label_png import IGNORE
from stages.methods.eil.agent import PolicyAgent
from stages.methods.eil.critic import class_fractions
from stages.methods.eil.diagnostics import (
    RANDOM_ACTIONS,
    Proposal,
    additions,
    precision,
    random_precision_at,
    round_diagnostics,
)
from stages.methods.eil.inference import class_thresholds, infer_labels, radius_in_pixels
from stages.methods.eil.replay import ReplayBuffer, Transitions
from stages.methods.eil.reward import Rewarder
from stages.runtime.distributed import DistContext, autocast, inference_copy

POLICIES = ("none", "random", "random_assessor", "searcher_assessor")
REWARD_BASELINES = ("none", "replay_mean", "round_mean")
PASS_BATCH = 8  # images per teacher pass when relabelling (of one canvas, so no view depends on it)


@dataclass(frozen=True)
class TeacherView:
    """What the teacher makes of one image."""

    features: torch.Tensor  # (C, h, w) decoder features before the classifier
    probs_grid: torch.Tensor  # (K, h, w) class probabilities on the feature grid
    probs: np.ndarray  # (K, H, W) class probabilities at image resolution
    pyramid: list[torch.Tensor] | None = None  # the backbone's maps on the image's own canvas, fp32


def _own_canvas(level: torch.Tensor, canvas: tuple[int, int], own: tuple[int, int]) -> torch.Tensor:
    """A backbone map of a shared canvas cut to the image's own canvas (whole when they agree)."""
    rows, cols = (-(-n * o // c) for n, o, c in zip(level.shape[-2:], own, canvas))
    return level[None, :, :rows, :cols].float()


@torch.no_grad()
def teacher_views(teacher: nn.Module, images: Sequence[np.ndarray], dist: DistContext,
                  keep_pyramid: bool = False) -> list[TeacherView]:
    """Run the teacher (a ``Segmenter``, as ``inference_copy`` makes it) on whole images in one
    pass: the map its decoder's classifier reads, and the class probabilities on that grid and at
    image resolution (as its forward upsamples); with ``keep_pyramid``, the backbone's maps too.

    The images are padded to one canvas (``stages.data.canvas``: the largest height and width,
    rounded up), and each view is cropped back to its image. Images of one canvas give the views
    each would give alone; in a batch of mixed sizes, a smaller image's view also depends on how
    far it was padded.
    """
    sizes = [image.shape[:2] for image in images]
    canvas = padded_size((max(h for h, _ in sizes), max(w for _, w in sizes)), SIZE_DIVISOR)
    x = dist.images(torch.stack([pad_to(to_tensor(image), canvas) for image in images]))
    with autocast(dist):
        pyramid = teacher.backbone(x)
        features = teacher.decoder.features(pyramid)
        logits = teacher.decoder.classifier(features)
    full = F.interpolate(logits, size=canvas, mode="bilinear", align_corners=False)
    stride = canvas[0] // features.shape[-2]
    views = []
    for i, (h, w) in enumerate(sizes):
        grid = (slice(None), slice(0, -(-h // stride)), slice(0, -(-w // stride)))
        own = padded_size((h, w), SIZE_DIVISOR)
        kept = [_own_canvas(level[i], canvas, own) for level in pyramid] if keep_pyramid else None
        views.append(TeacherView(features[i][grid].float(), torch.softmax(logits[i][grid].float(), 0),
                                 torch.softmax(full[i, :, :h, :w].float(), 0).cpu().numpy(), kept))
    return views


def _canvas(image: np.ndarray) -> tuple[int, int]:
    return padded_size(image.shape[:2], SIZE_DIVISOR)


def encode_state(view: TeacherView, label: np.ndarray, grid: int) -> torch.Tensor:
    """s = (F, P, M) as one (C + 2K + 1, grid, grid) tensor."""
    num_classes, size = view.probs_grid.shape[0], view.features.shape[-2:]
    fractions = class_fractions(torch.from_numpy(label).to(view.features.device), num_classes, size)
    unlabelled = 1.0 - fractions.sum(0, keepdim=True)
    stacked = torch.cat([F.normalize(view.features, dim=0), view.probs_grid, fractions, unlabelled])
    return F.adaptive_avg_pool2d(stacked[None], grid)[0]


def fit_policy(agent: PolicyAgent, replay: ReplayBuffer, updates: int, batch_size: int, baseline: float,
               train_searcher: bool, generator: torch.Generator, device: torch.device) -> list[dict[str, float]]:
    """``updates`` DDPG updates on mini-batches drawn from ``replay``, each reward less ``baseline``
    (0: the rewards as they are); returns each update's losses."""
    terms = []
    for _ in range(updates):
        batch = replay.sample(batch_size, generator).to(device)
        batch.reward = batch.reward - baseline
        terms.append(agent.ddpg_update(**vars(batch), train_searcher=train_searcher))
    return terms


@dataclass(frozen=True)
class RoundSettings:
    policy: str
    action_space: str
    radius: float
    radius_unit: str
    noise_std: float
    explore_random: float
    transitions: int
    policy_updates: int
    policy_batch: int
    grid: int
    restrict_classes: bool
    reward_baseline: str


class Explorer:
    """One round over the training images; images and current labels come through callables.

    The teacher runs as ``inference_copy`` makes it (bf16 weights where the training computes in
    bf16), on batches (``teacher_views``): explored images share passes of ``PASS_BATCH``, and the
    labelling passes group images of one canvas. Its passes are most of a round's time.
    """

    def __init__(self, teacher: nn.Module, agent: PolicyAgent | None, settings: RoundSettings, rewarder: Rewarder,
                 num_classes: int, action_dim: int, generator: torch.Generator, dist: DistContext) -> None:
        self.teacher, self.agent, self.s = inference_copy(teacher, dist).eval(), agent, settings
        self.rewarder = rewarder
        self.num_classes, self.action_dim = num_classes, action_dim
        self.generator, self.dist = generator, dist
        # the diagnostics' random draws have their own stream, so measuring never shifts the policy's
        self.diagnostic_generator = torch.Generator().manual_seed(generator.initial_seed() + 2**32)

    @property
    def uses_assessor(self) -> bool:
        return self.s.policy in ("random_assessor", "searcher_assessor")

    def _random_actions(self, n: int) -> torch.Tensor:
        return torch.rand(n, self.action_dim, generator=self.generator).to(self.dist.device)

    def _act(self, state: torch.Tensor, noise: bool) -> torch.Tensor:
        if self.s.policy != "searcher_assessor":
            return self._random_actions(1)[0]
        if noise and self.s.explore_random > 0:
            if float(torch.rand((), generator=self.generator)) < self.s.explore_random:
                return self._random_actions(1)[0]
        with torch.no_grad():
            action = self.agent.searcher(state[None])[0]
        if noise:
            jitter = torch.randn(action.shape, generator=self.generator).to(self.dist.device)
            action = action + self.s.noise_std * jitter
        return action.clamp(0.0, 1.0)

    def _infer(self, view: TeacherView, label: np.ndarray, action: torch.Tensor) -> np.ndarray:
        thresholds = class_thresholds(action.cpu().numpy(), self.s.action_space, self.num_classes)
        radius = radius_in_pixels(self.s.radius, self.s.radius_unit, label.shape)
        return infer_labels(label, view.probs, thresholds, radius, self.s.restrict_classes)

    def views_by_canvas(self, ids: list[str], image: Callable[[str], np.ndarray]) -> Iterator[tuple[str, TeacherView]]:
        """Every image's view, from passes over images of one canvas: each view is the image's
        own, whatever else shared its pass."""
        stream = ((image_id, image(image_id)) for image_id in ids)
        for group_ids, images in grouped_batches(stream, PASS_BATCH, key=_canvas):
            yield from zip(group_ids, self._views(images))

    def _views(self, images: list[np.ndarray]) -> list[TeacherView]:
        return teacher_views(self.teacher, images, self.dist, keep_pyramid=self.rewarder.needs_pyramid)

    def reward(self, view: TeacherView, current: np.ndarray, proposal: np.ndarray) -> float:
        return self.rewarder(view.features, view.pyramid, current, proposal)

    def collect(self, ids: list[str], image: Callable[[str], np.ndarray],
                label: Callable[[str], np.ndarray]) -> Transitions:
        """``transitions`` images drawn at random, each explored once: the searcher's action plus
        noise (or a random action), H(M, a) = M', its reward (``reward``), s' = (F, P, M')."""
        picks = torch.randint(len(ids), (self.s.transitions,), generator=self.generator).tolist()
        rows = []
        for start in range(0, len(picks), PASS_BATCH):
            chunk = picks[start:start + PASS_BATCH]
            for i, view in zip(chunk, self._views([image(ids[i]) for i in chunk])):
                m = label(ids[i])
                state = encode_state(view, m, self.s.grid)
                action = self._act(state, noise=True)
                new = self._infer(view, m, action)
                reward = torch.tensor(self.reward(view, m, new))
                rows.append((state, action, reward, encode_state(view, new, self.s.grid)))
        state, action, reward, next_state = (torch.stack(x) for x in zip(*rows))
        next_action = None if self.s.policy == "searcher_assessor" else self._random_actions(len(rows))
        return Transitions(state, action, reward, next_state, next_action)

    def learn(self, ids: list[str], image: Callable[[str], np.ndarray], label: Callable[[str], np.ndarray],
              replay: ReplayBuffer) -> tuple[dict[str, float], Transitions | None]:
        """Phase 1: this round's transitions join ``replay``; ``policy_updates`` DDPG updates on
        mini-batches drawn from it. Returns the round's row (rewards; Q against the fresh rewards
        before and after the updates; TD loss of the first and last tenth of the updates) and the
        fresh transitions, which the caller keeps for a resumed run."""
        if not self.uses_assessor:
            return {}, None
        fresh = self.collect(ids, image, label)
        before = self.agent.assess(**vars(fresh))
        replay.add(fresh)
        baseline = {"none": 0.0, "replay_mean": replay.mean_reward(),
                    "round_mean": float(fresh.reward.mean())}[self.s.reward_baseline]
        terms = fit_policy(self.agent, replay, self.s.policy_updates, self.s.policy_batch, baseline,
                           self.s.policy == "searcher_assessor", self.generator, self.dist.device)
        after = self.agent.assess(**vars(fresh))
        tenth = max(len(terms) // 10, 1)
        out = {"reward": float(fresh.reward.mean()), "reward_std": float(fresh.reward.std()),
               "q_reward_corr_before": before["q_reward_corr"], "q_reward_corr": after["q_reward_corr"],
               "q_fresh": after["q"], "td_loss_first": float(np.mean([t["assessor_loss"] for t in terms[:tenth]])),
               "td_loss_last": float(np.mean([t["assessor_loss"] for t in terms[-tenth:]])), "replay": len(replay),
               "reward_baseline": baseline}
        if "searcher_loss" in terms[0]:
            out["searcher_loss"] = float(np.mean([t["searcher_loss"] for t in terms]))
        return out, fresh

    def relabel(self, ids: list[str], image: Callable[[str], np.ndarray], label: Callable[[str], np.ndarray],
                write: Callable[[str, np.ndarray], None],
                truth: Callable[[str], np.ndarray | None] = lambda _: None) -> dict[str, float]:
        """Phase 2: infer every image's next label map and write it (adopted, or the current one).
        Where ``truth`` gives a mask (reporting only), the proposal is also measured against it
        (``diagnostics``), with random thresholds on the same image for comparison."""
        adopted, q_values, actions, added, proposals = 0, [], [], 0, []
        for image_id, view in self.views_by_canvas(ids, image):
            m = label(image_id)
            state = encode_state(view, m, self.s.grid)
            action = self._act(state, noise=False)
            new = self._infer(view, m, action)
            adopt = True
            if self.uses_assessor:
                with torch.no_grad():
                    q = float(self.agent.assessor(state[None], action[None])[0])
                q_values.append(q)
                adopt = q > 0
            actions.append(action.cpu().numpy())
            if adopt:
                adopted += 1
                added += int(((m == IGNORE) & (new != IGNORE)).sum())
            write(image_id, new if adopt else m)
            gt = truth(image_id)
            if gt is not None:
                proposals.append(self._measured(view, m, new, adopt, gt))
        row = {"adopted": adopted / max(len(ids), 1), "pixels_added": added}
        if q_values:
            row["q_mean"] = float(np.mean(q_values))
        for j, value in enumerate(np.mean(actions, axis=0)):
            row[f"action{j}"] = float(value)
        if proposals:
            row.update(round_diagnostics(proposals))
        return row

    def _measured(self, view: TeacherView, m: np.ndarray, new: np.ndarray, adopted: bool, gt: np.ndarray) -> Proposal:
        reward = self.reward(view, m, new)
        mine = additions(m, new, gt)
        randoms = [additions(m, self._infer(view, m, a), gt)
                   for a in torch.rand(RANDOM_ACTIONS, self.action_dim, generator=self.diagnostic_generator)]
        return Proposal(reward, adopted, precision(new, gt) - precision(m, gt), mine,
                        random_precision_at(mine.added, randoms))
