"""One exploration round: learn the policy on transitions, then infer and adopt new labels.

The state of an image is what the EMA teacher sees (paper: s = (F, P, M)): its decoder features
(L2-normalised per pixel), its class probabilities and the current label map as class fractions
plus an "unlabelled" fraction, all pooled to a ``grid`` x ``grid`` tensor (reconstructed: the
paper does not give its state encoding).

Phase 1 (policy learning, policies with an assessor): ``policy_updates`` DDPG updates, each on
``policy_batch`` images drawn at random. For each image the action is the searcher's plus
Gaussian noise (``noise_std``), or uniform random for the random policies; H(M, a) gives M';
the reward is ``V(M', F) - V(M, F)`` and the next state s' = (F, P, M'). Reconstructed: the
reward uses the teacher's features of this round for both maps (the paper's F' comes from the
segmenter after it trained on M', which would delay every transition by a whole round).

Phase 2 (labelling, every training image): the searcher's action without noise (or a random
one), M' = H(M, a), adopted only where the assessor scores Q(s, a) > 0 (paper Eq. 13); the
``random`` policy adopts every M'.
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
from stages.methods.eil.critic import class_fractions, critic_value
from stages.methods.eil.inference import class_thresholds, infer_labels
from stages.runtime.distributed import DistContext, autocast, inference_copy

POLICIES = ("none", "random", "random_assessor", "searcher_assessor")
PASS_BATCH = 8  # images per teacher pass when relabelling (of one canvas, so no view depends on it)


@dataclass(frozen=True)
class TeacherView:
    """What the teacher makes of one image."""

    features: torch.Tensor  # (C, h, w) decoder features before the classifier
    probs_grid: torch.Tensor  # (K, h, w) class probabilities on the feature grid
    probs: np.ndarray  # (K, H, W) class probabilities at image resolution


@torch.no_grad()
def teacher_views(teacher: nn.Module, images: Sequence[np.ndarray], dist: DistContext) -> list[TeacherView]:
    """Run the teacher (a ``Segmenter``, as ``inference_copy`` makes it) on whole images in one
    pass: the map its decoder's classifier reads, and the class probabilities on that grid and at
    image resolution (as its forward upsamples).

    The images are padded to one canvas (``stages.data.canvas``: the largest height and width,
    rounded up), and each view is cropped back to its image. Images of one canvas give the views
    each would give alone; in a batch of mixed sizes, a smaller image's view also depends on how
    far it was padded.
    """
    sizes = [image.shape[:2] for image in images]
    canvas = padded_size((max(h for h, _ in sizes), max(w for _, w in sizes)), SIZE_DIVISOR)
    x = dist.images(torch.stack([pad_to(to_tensor(image), canvas) for image in images]))
    with autocast(dist):
        features = teacher.decoder.features(teacher.backbone(x))
        logits = teacher.decoder.classifier(features)
    full = F.interpolate(logits, size=canvas, mode="bilinear", align_corners=False)
    stride = canvas[0] // features.shape[-2]
    views = []
    for i, (h, w) in enumerate(sizes):
        grid = (slice(None), slice(0, -(-h // stride)), slice(0, -(-w // stride)))
        views.append(TeacherView(features[i][grid].float(), torch.softmax(logits[i][grid].float(), 0),
                                 torch.softmax(full[i, :, :h, :w].float(), 0).cpu().numpy()))
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


def label_value(view: TeacherView, label: np.ndarray, delta: float) -> torch.Tensor:
    num_classes, size = view.probs_grid.shape[0], view.features.shape[-2:]
    fractions = class_fractions(torch.from_numpy(label).to(view.features.device), num_classes, size)
    return critic_value(view.features, fractions, delta)


@dataclass(frozen=True)
class RoundSettings:
    policy: str
    action_space: str
    radius: float
    noise_std: float
    policy_updates: int
    policy_batch: int
    grid: int
    delta: float
    restrict_classes: bool


class Explorer:
    """One round over the training images; images and current labels come through callables.

    The teacher runs as ``inference_copy`` makes it (bf16 weights where the training computes in
    bf16), on batches (``teacher_views``): an update's ``policy_batch`` images share one pass, and
    the labelling passes group images of one canvas. Its passes are most of a round's time.
    """

    def __init__(self, teacher: nn.Module, agent: PolicyAgent | None, settings: RoundSettings,
                 num_classes: int, action_dim: int, generator: torch.Generator, dist: DistContext) -> None:
        self.teacher, self.agent, self.s = inference_copy(teacher, dist).eval(), agent, settings
        self.num_classes, self.action_dim = num_classes, action_dim
        self.generator, self.dist = generator, dist

    @property
    def uses_assessor(self) -> bool:
        return self.s.policy in ("random_assessor", "searcher_assessor")

    def _random_actions(self, n: int) -> torch.Tensor:
        return torch.rand(n, self.action_dim, generator=self.generator).to(self.dist.device)

    def _act(self, state: torch.Tensor, noise: bool) -> torch.Tensor:
        if self.s.policy != "searcher_assessor":
            return self._random_actions(1)[0]
        with torch.no_grad():
            action = self.agent.searcher(state[None])[0]
        if noise:
            jitter = torch.randn(action.shape, generator=self.generator).to(self.dist.device)
            action = action + self.s.noise_std * jitter
        return action.clamp(0.0, 1.0)

    def _infer(self, view: TeacherView, label: np.ndarray, action: torch.Tensor) -> np.ndarray:
        thresholds = class_thresholds(action.cpu().numpy(), self.s.action_space, self.num_classes)
        return infer_labels(label, view.probs, thresholds, self.s.radius, self.s.restrict_classes)

    def views_by_canvas(self, ids: list[str], image: Callable[[str], np.ndarray]) -> Iterator[tuple[str, TeacherView]]:
        """Every image's view, from passes over images of one canvas: each view is the image's
        own, whatever else shared its pass."""
        stream = ((image_id, image(image_id)) for image_id in ids)
        for group_ids, images in grouped_batches(stream, PASS_BATCH, key=_canvas):
            yield from zip(group_ids, teacher_views(self.teacher, images, self.dist))

    def learn(self, ids: list[str], image: Callable[[str], np.ndarray],
              label: Callable[[str], np.ndarray]) -> dict[str, float]:
        """Phase 1: DDPG updates on transitions of randomly drawn images; mean reward and losses."""
        if not self.uses_assessor:
            return {}
        rewards, terms = [], []
        for _ in range(self.s.policy_updates):
            picks = torch.randint(len(ids), (self.s.policy_batch,), generator=self.generator).tolist()
            batch = []
            for i, view in zip(picks, teacher_views(self.teacher, [image(ids[i]) for i in picks], self.dist)):
                m = label(ids[i])
                state = encode_state(view, m, self.s.grid)
                action = self._act(state, noise=True)
                new = self._infer(view, m, action)
                reward = label_value(view, new, self.s.delta) - label_value(view, m, self.s.delta)
                batch.append((state, action, reward, encode_state(view, new, self.s.grid)))
            state, action, reward, next_state = (torch.stack(x) for x in zip(*batch))
            next_action = None if self.s.policy == "searcher_assessor" else self._random_actions(len(picks))
            terms.append(self.agent.ddpg_update(state, action, reward, next_state, next_action,
                                                train_searcher=self.s.policy == "searcher_assessor"))
            rewards.append(float(reward.mean()))
        out = {"reward": float(np.mean(rewards))}
        for key in terms[0]:
            out[key] = float(np.mean([t[key] for t in terms]))
        return out

    def relabel(self, ids: list[str], image: Callable[[str], np.ndarray], label: Callable[[str], np.ndarray],
                write: Callable[[str, np.ndarray], None]) -> dict[str, float]:
        """Phase 2: infer every image's next label map and write it (adopted, or the current one)."""
        adopted, q_values, actions, added = 0, [], [], 0
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
        row = {"adopted": adopted / max(len(ids), 1), "pixels_added": added}
        if q_values:
            row["q_mean"] = float(np.mean(q_values))
        for j, value in enumerate(np.mean(actions, axis=0)):
            row[f"action{j}"] = float(value)
        return row
