"""The transitions the exploratory operators learn from, kept across rounds.

A round explores a few hundred images; twenty DDPG updates on those alone left the assessor's Q
where its initialisation put it (the sign of Q, hence adoption, was set per seed). Every round's
transitions join a replay buffer, and each round runs many updates on mini-batches drawn from it,
so the assessor's TD loss can settle on everything seen so far. States are kept in float16
(half the memory; what is stored is exactly what a resumed run reloads, so resuming is exact).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from stages.io.atomic import atomic_path


@dataclass
class Transitions:
    """A batch of (s, a, r, s', a'); ``next_action`` is the random policy's own a' (None: the
    target searcher's, computed at update time)."""

    state: torch.Tensor
    action: torch.Tensor
    reward: torch.Tensor
    next_state: torch.Tensor
    next_action: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.reward)

    def stored(self) -> Transitions:
        """On the CPU, states in float16: the form the buffer and the round files keep."""
        cpu = {k: None if v is None else v.detach().cpu() for k, v in vars(self).items()}
        cpu["state"], cpu["next_state"] = cpu["state"].half(), cpu["next_state"].half()
        return Transitions(**cpu)

    def to(self, device: torch.device) -> Transitions:
        """On ``device``, states back in float32, for the networks."""
        moved = {k: None if v is None else v.to(device) for k, v in vars(self).items()}
        moved["state"], moved["next_state"] = moved["state"].float(), moved["next_state"].float()
        return Transitions(**moved)

    def save(self, path: Path) -> None:
        with atomic_path(path) as tmp:
            torch.save(vars(self.stored()), tmp)

    @classmethod
    def load(cls, path: Path) -> Transitions:
        return cls(**torch.load(path, map_location="cpu", weights_only=True))

    @classmethod
    def cat(cls, parts: list[Transitions]) -> Transitions:
        def joined(name: str) -> torch.Tensor | None:
            values = [getattr(p, name) for p in parts]
            return None if values[0] is None else torch.cat(values)
        return cls(*(joined(name) for name in ("state", "action", "reward", "next_state", "next_action")))

    def take(self, rows: torch.Tensor) -> Transitions:
        return Transitions(*(None if v is None else v[rows] for v in vars(self).values()))


class ReplayBuffer:
    """The last ``capacity`` transitions, first in first out."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.data: Transitions | None = None

    def __len__(self) -> int:
        return 0 if self.data is None else len(self.data)

    def add(self, batch: Transitions) -> None:
        stored = batch.stored()
        self.data = stored if self.data is None else Transitions.cat([self.data, stored])
        if len(self.data) > self.capacity:
            self.data = self.data.take(torch.arange(len(self.data) - self.capacity, len(self.data)))

    def mean_reward(self) -> float:
        """The mean reward of the transitions kept (0 when empty)."""
        return 0.0 if self.data is None else float(self.data.reward.float().mean())

    def sample(self, n: int, generator: torch.Generator) -> Transitions:
        """``n`` transitions drawn uniformly with replacement (float16 states; ``to`` restores them)."""
        if self.data is None:
            raise ValueError("sampling from an empty replay buffer")
        return self.data.take(torch.randint(len(self.data), (n,), generator=generator))
