"""The shared training loop's numerical-fault guard: stop (default) or skip, counted and reported."""
from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import torch

from stages.io.checkpoint import load_checkpoint
from stages.runtime.distributed import DistContext
from stages.runtime.optim import poly_schedule
from stages.runtime.trainer import LoopConfig, NonFiniteLossError, train_loop

CPU = DistContext(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))


class Points(torch.utils.data.Dataset):
    def __len__(self) -> int:
        return 8

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"x": torch.tensor([float(i), 1.0])}


def poisoned_step(bad_calls: set[int]):
    """A least-squares step whose loss is NaN on the given (1-based) calls."""
    calls = [0]

    def step(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        calls[0] += 1
        loss = (model(batch["x"]) - 1).pow(2).mean()
        return {"loss": loss * float("nan") if calls[0] in bad_calls else loss}
    return step


def run(tmp_path: Path, bad_calls: set[int], **loop) -> tuple[torch.nn.Module, list[dict]]:
    torch.manual_seed(0)
    model = torch.nn.Linear(2, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    cfg = LoopConfig(**{"steps": 6, "batch_size": 2, "checkpoint_every": 1, **loop})
    rows = train_loop(model, optimizer, poly_schedule(optimizer, cfg.steps), Points(), poisoned_step(bad_calls),
                      cfg, CPU, tmp_path / "ckpt.pt", tmp_path / "metrics.csv", {"test": 1})
    return model, rows


def test_nonfinite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    with pytest.raises(NonFiniteLossError, match=r"non-finite loss at step 3 .*ckpt\.pt"):
        run(tmp_path, bad_calls={3})
    state = load_checkpoint(tmp_path / "ckpt.pt")
    assert state["step"] == 2
    assert all(torch.isfinite(t).all() for t in state["model"].values())
    assert not (tmp_path / "metrics.csv").exists()  # no final output from a failed run


def test_skip_counts_the_bad_steps_and_still_trains_every_step(tmp_path):
    model, rows = run(tmp_path, bad_calls={2, 5}, on_nonfinite="skip")
    assert [r["step"] for r in rows] == list(range(1, 7))  # skipped batches are not counted as steps
    assert [r["skipped"] for r in rows] == [0, 1, 1, 2, 2, 2]
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert pd.read_csv(tmp_path / "metrics.csv")["skipped"].iloc[-1] == 2


def test_skip_gives_up_after_max_skipped(tmp_path):
    with pytest.raises(NonFiniteLossError, match="non-finite loss at step 2"):
        run(tmp_path, bad_calls={2, 3, 4}, on_nonfinite="skip", max_skipped=2)
