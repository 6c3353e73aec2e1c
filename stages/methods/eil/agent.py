"""The exploratory operators: policy searcher phi(s) -> a and policy assessor psi(s, a) -> Q,
each with a target copy, trained as in DDPG (Lillicrap et al.), which the paper follows.

- Searcher: a small residual network on the state, global average pooling, a linear layer and
  a sigmoid, so every action component is a probability threshold in [0, 1].
- Assessor: the same kind of state trunk, its pooled vector joined with the action, then a
  two-layer head giving Q(s, a).
  Its last layer starts at zero, so Q starts at 0 for every state and action and moves only as
  rewards teach it (a random last layer set Q's sign, hence adoption, per seed).
- One update (``ddpg_update``): the assessor regresses Q(s, a) on ``r + gamma * Q'(s', a')``
  (MSE), with a' = phi'(s') from the target searcher, or a random action when the policy itself
  is random; then the searcher follows ``-Q(s, phi(s))``; then both target networks move
  ``target_rate`` of the way toward their networks.

The searcher's optimiser is the paper's (SGD, momentum 0.9, weight decay 0.02, cosine schedule
over all its updates; ``searcher_optimizer: adam`` for Adam at ``lr``). Reconstructed (the paper
uses ResNet34 trunks and gives no target rate): the trunks are ``blocks`` residual blocks of
``width`` channels with GroupNorm (batches of a few states) on a ``grid`` x ``grid`` state; the
assessor uses Adam at ``lr`` (a CPU round affords hundreds of updates, where SGD at the paper's
rate barely moves a regression); target rate 0.05 (DDPG's 0.001 assumes millions of updates).
"""
from __future__ import annotations

import copy
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


class ResidualBlock(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(width, width, 3, padding=1, bias=False), nn.GroupNorm(4, width), nn.ReLU(inplace=True),
            nn.Conv2d(width, width, 3, padding=1, bias=False), nn.GroupNorm(4, width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(x + self.body(x))


class StateTrunk(nn.Module):
    """State (B, C, g, g) -> (B, width): a 1x1 stem, residual blocks, global average pooling."""

    def __init__(self, in_channels: int, width: int, blocks: int) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, width, 1), nn.ReLU(inplace=True))
        self.blocks = nn.Sequential(*(ResidualBlock(width) for _ in range(blocks)))

    def forward(self, state: torch.Tensor) -> torch.Tensor:
        return self.blocks(self.stem(state)).mean(dim=(2, 3))


class Searcher(nn.Module):
    def __init__(self, in_channels: int, action_dim: int, width: int, blocks: int) -> None:
        super().__init__()
        self.trunk = StateTrunk(in_channels, width, blocks)
        self.head = nn.Linear(width, action_dim)

    def forward(self, state: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.head(self.trunk(state)))


class Assessor(nn.Module):
    def __init__(self, in_channels: int, action_dim: int, width: int, blocks: int) -> None:
        super().__init__()
        self.trunk = StateTrunk(in_channels, width, blocks)
        self.head = nn.Sequential(nn.Linear(width + action_dim, width), nn.ReLU(inplace=True), nn.Linear(width, 1))
        nn.init.zeros_(self.head[-1].weight)
        nn.init.zeros_(self.head[-1].bias)

    def forward(self, state: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        return self.head(torch.cat([self.trunk(state), action], dim=1))[:, 0]


@torch.no_grad()
def soft_update(target: nn.Module, source: nn.Module, rate: float) -> None:
    """target <- (1 - rate) * target + rate * source, parameter by parameter."""
    for t, s in zip(target.parameters(), source.parameters()):
        t.lerp_(s, rate)


SEARCHER_OPTIMIZERS = ("sgd", "adam")
PAPER_SGD = {"lr": 1e-3, "momentum": 0.9, "weight_decay": 0.02}  # EIL's exploratory operators


class PolicyAgent(nn.Module):
    """Searcher, assessor, their target copies, their two optimisers and the searcher's schedule
    (cosine over ``searcher_steps`` updates)."""

    def __init__(self, in_channels: int, action_dim: int, width: int, blocks: int, lr: float,
                 gamma: float, target_rate: float, searcher_optimizer: str = "sgd", searcher_steps: int = 1) -> None:
        super().__init__()
        if searcher_optimizer not in SEARCHER_OPTIMIZERS:
            known = ", ".join(SEARCHER_OPTIMIZERS)
            raise ValueError(f"searcher_optimizer {searcher_optimizer!r} is not one of {known}")
        self.action_dim, self.gamma, self.target_rate = action_dim, gamma, target_rate
        self.searcher = Searcher(in_channels, action_dim, width, blocks)
        self.assessor = Assessor(in_channels, action_dim, width, blocks)
        self.target_searcher = copy.deepcopy(self.searcher).requires_grad_(False)
        self.target_assessor = copy.deepcopy(self.assessor).requires_grad_(False)
        if searcher_optimizer == "sgd":
            self.searcher_optimizer = torch.optim.SGD(self.searcher.parameters(), **PAPER_SGD)
        else:
            self.searcher_optimizer = torch.optim.Adam(self.searcher.parameters(), lr=lr)
        self.searcher_schedule = torch.optim.lr_scheduler.CosineAnnealingLR(self.searcher_optimizer,
                                                                            T_max=max(searcher_steps, 1))
        self.assessor_optimizer = torch.optim.Adam(self.assessor.parameters(), lr=lr)

    def bellman_target(self, reward: torch.Tensor, next_state: torch.Tensor,
                       next_action: torch.Tensor | None = None) -> torch.Tensor:
        """r + gamma * Q'(s', a'), a' = phi'(s') unless given (a random policy's next action)."""
        with torch.no_grad():
            if next_action is None:
                next_action = self.target_searcher(next_state)
            return reward + self.gamma * self.target_assessor(next_state, next_action)

    def ddpg_update(self, state: torch.Tensor, action: torch.Tensor, reward: torch.Tensor,
                    next_state: torch.Tensor, next_action: torch.Tensor | None = None,
                    train_searcher: bool = True) -> dict[str, float]:
        """One DDPG step on a batch of transitions; returns the losses."""
        target = self.bellman_target(reward, next_state, next_action)
        assessor_loss = F.mse_loss(self.assessor(state, action), target)
        self.assessor_optimizer.zero_grad(set_to_none=True)
        assessor_loss.backward()
        self.assessor_optimizer.step()
        terms = {"assessor_loss": float(assessor_loss.detach())}
        if train_searcher:
            searcher_loss = -self.assessor(state, self.searcher(state)).mean()
            self.searcher_optimizer.zero_grad(set_to_none=True)
            searcher_loss.backward()  # the assessor's gradients are dropped at its next zero_grad
            self.searcher_optimizer.step()
            self.searcher_schedule.step()
            terms["searcher_loss"] = float(searcher_loss.detach())
            soft_update(self.target_searcher, self.searcher, self.target_rate)
        soft_update(self.target_assessor, self.assessor, self.target_rate)
        return terms

    @torch.no_grad()
    def assess(self, state: torch.Tensor, action: torch.Tensor, reward: torch.Tensor, next_state: torch.Tensor,
               next_action: torch.Tensor | None = None) -> dict[str, float]:
        """How Q(s, a) stands against the observed rewards of a batch: means, their Pearson
        correlation (NaN when either is constant) and the TD loss against the Bellman target."""
        q = self.assessor(state, action)
        td = float(F.mse_loss(q, self.bellman_target(reward, next_state, next_action)))
        centred_q, centred_r = q - q.mean(), reward - reward.mean()
        scale = float(centred_q.norm() * centred_r.norm())
        corr = float((centred_q * centred_r).sum()) / scale if scale > 0 else float("nan")
        return {"q": float(q.mean()), "reward": float(reward.mean()), "q_reward_corr": corr, "td_loss": td}

    def full_state(self) -> dict[str, Any]:
        """Networks and optimiser states: what a checkpoint keeps."""
        return {"networks": self.state_dict(), "searcher_optimizer": self.searcher_optimizer.state_dict(),
                "searcher_schedule": self.searcher_schedule.state_dict(),
                "assessor_optimizer": self.assessor_optimizer.state_dict()}

    def load_full_state(self, state: dict[str, Any]) -> None:
        self.load_state_dict(state["networks"])
        self.searcher_optimizer.load_state_dict(state["searcher_optimizer"])
        self.searcher_schedule.load_state_dict(state["searcher_schedule"])
        self.assessor_optimizer.load_state_dict(state["assessor_optimizer"])
