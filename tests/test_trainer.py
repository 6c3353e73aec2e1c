"""The shared training loop: its numerical-fault guard (stop, or skip counted and reported) and
gradient accumulation."""
from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import torch

from stages.errors import InputError
from stages.io.checkpoint import load_checkpoint
from stages.runtime.distributed import DistContext
from stages.runtime.hooks import StepContext, TrainHooks
from stages.runtime.sampling import EpochBatchSampler
from stages.runtime.settings import TrainSettings
from stages.runtime.trainer import NonFiniteLossError, train_loop

CPU = DistContext(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))


class Points(torch.utils.data.Dataset):
    def __init__(self, n: int = 8) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"x": torch.tensor([float(i), 1.0]), "y": torch.tensor([0.5 * i - 1.0])}


class Linear(torch.nn.Linear):
    def param_groups(self, head_lr_mult: float) -> list[dict]:
        return [{"params": list(self.parameters())}]


class LeastSquares(TrainHooks):
    """A least-squares step whose loss is NaN on the given (1-based) calls."""

    def __init__(self, bad_calls: set[int] = frozenset()) -> None:
        self.bad_calls, self.calls = bad_calls, 0

    def training_step(self, net, batch, ctx: StepContext) -> dict[str, torch.Tensor]:
        self.calls += 1
        loss = (net(batch["x"]) - batch["y"]).pow(2).mean()
        return {"loss": loss * float("nan") if self.calls in self.bad_calls else loss}


def train(tmp_path: Path, hooks: TrainHooks, n: int = 8, name: str = "run", **settings) -> tuple[torch.nn.Module, list]:
    torch.manual_seed(0)
    model = Linear(2, 1)
    settings = TrainSettings(**{"steps": 6, "batch_size": 2, "checkpoint_every": 1, "lr": 0.001,
                                "weight_decay": 0.0, **settings})
    rows = train_loop(model, hooks, Points(n), settings, CPU, tmp_path / f"{name}.pt", tmp_path / f"{name}.csv",
                      {"test": 1})
    return model, rows


def run(tmp_path: Path, bad_calls: set[int], **settings) -> tuple[torch.nn.Module, list[dict]]:
    return train(tmp_path, LeastSquares(bad_calls), name="ckpt", **settings)


def test_nonfinite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    with pytest.raises(NonFiniteLossError, match=r"non-finite loss at step 3 .*ckpt\.pt"):
        run(tmp_path, bad_calls={3})
    state = load_checkpoint(tmp_path / "ckpt.pt")
    assert state["step"] == 2
    assert all(torch.isfinite(t).all() for t in state["model"].values())
    assert not (tmp_path / "ckpt.csv").exists()  # no final output from a failed run


def test_skip_counts_the_bad_steps_and_still_trains_every_step(tmp_path):
    model, rows = run(tmp_path, bad_calls={2, 5}, on_nonfinite="skip")
    assert [r["step"] for r in rows] == list(range(1, 7))  # skipped batches are not counted as steps
    assert [r["skipped"] for r in rows] == [0, 1, 1, 2, 2, 2]
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert pd.read_csv(tmp_path / "ckpt.csv")["skipped"].iloc[-1] == 2


def test_skip_gives_up_after_max_skipped(tmp_path):
    with pytest.raises(NonFiniteLossError, match="non-finite loss at step 2"):
        run(tmp_path, bad_calls={2, 3, 4}, on_nonfinite="skip", max_skipped=2)


def _weights(model: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def test_accumulation_equals_one_large_batch(tmp_path: Path) -> None:
    """Four micro-batches of 2 accumulated give the step of one batch of 8 (a linear model has no
    batch statistics, and every micro-batch averages the same number of points)."""
    big = _weights(train(tmp_path, LeastSquares(), n=16, name="big", steps=3, batch_size=8)[0])
    accumulated, rows = train(tmp_path, LeastSquares(), n=16, name="acc", steps=3, batch_size=2,
                              effective_batch_size=8)
    small = _weights(train(tmp_path, LeastSquares(), n=16, name="small", steps=3, batch_size=2)[0])
    assert torch.allclose(big, _weights(accumulated), atol=1e-6)
    assert not torch.allclose(big, small, atol=1e-6)
    assert [r["step"] for r in rows] == [1, 2, 3]


def test_skip_with_accumulation_drops_the_whole_step(tmp_path: Path) -> None:
    """A NaN in the 2nd of 4 micro-batches skips that step's 4 micro-batches, not just one."""
    hooks = LeastSquares(bad_calls={2})
    _, rows = train(tmp_path, hooks, n=32, name="skip", steps=2, batch_size=2, effective_batch_size=8,
                    on_nonfinite="skip")
    assert [r["skipped"] for r in rows] == [1, 1]
    assert hooks.calls == 2 + 4 + 4  # two micro-batches of the skipped step ran, two were dropped


def test_effective_batch_must_divide(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="effective_batch_size 6 is not a multiple of train.batch_size 4"):
        train(tmp_path, LeastSquares(), name="bad", batch_size=4, effective_batch_size=6)


def test_sampler_gives_a_step_the_same_images_on_any_process_count() -> None:
    """2 processes x batch 2 and 1 process x 2 micro-batches of 2 see the same 4 images per step."""
    two = [EpochBatchSampler(12, 2, 1, seed=3, epoch=1, rank=r, world=2).batches for r in (0, 1)]
    one = EpochBatchSampler(12, 2, 2, seed=3, epoch=1, rank=0, world=1).batches
    for step in range(3):
        assert sorted(two[0][step] + two[1][step]) == sorted(one[2 * step] + one[2 * step + 1])


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


@pytest.mark.parametrize("damage", ["truncated", "missing"])
def test_damaged_checkpoint_resumes_from_the_previous_one(tmp_path: Path, capsys, damage: str) -> None:
    """The file a save replaces is kept as <name>.prev.pt until the last step: a latest checkpoint
    found truncated (or missing: a kill between the two renames) resumes from it, to the weights of
    an uninterrupted run."""
    whole, _ = train(tmp_path, LeastSquares(), name="whole")
    assert not (tmp_path / "whole.prev.pt").exists(), "a finished run keeps no previous checkpoint"
    with pytest.raises(NonFiniteLossError):
        train(tmp_path, LeastSquares(bad_calls={5}), name="cut")  # stops after step 4
    latest, previous = tmp_path / "cut.pt", tmp_path / "cut.prev.pt"
    assert load_checkpoint(latest)["step"] == 4 and load_checkpoint(previous)["step"] == 3
    if damage == "truncated":
        _truncate(latest)
    else:
        latest.unlink()
    capsys.readouterr()

    resumed, rows = train(tmp_path, LeastSquares(), name="cut")
    log = capsys.readouterr().err
    if damage == "truncated":
        assert f"{latest}: not a readable checkpoint, truncated or damaged" in log
        assert f"it is removed, and the previous checkpoint {previous} used instead" in log
    assert f"resuming from {previous} at step 3/6" in log
    assert torch.equal(_weights(resumed), _weights(whole))
    assert [r["step"] for r in rows] == list(range(1, 7))
    assert load_checkpoint(latest)["step"] == 6 and not previous.exists()


def test_no_readable_checkpoint_names_the_files_to_delete(tmp_path: Path) -> None:
    with pytest.raises(NonFiniteLossError):
        train(tmp_path, LeastSquares(bad_calls={3}), name="cut")
    latest, previous = tmp_path / "cut.pt", tmp_path / "cut.prev.pt"
    _truncate(latest)
    _truncate(previous)
    with pytest.raises(InputError, match=rf"no readable training state is left to resume: delete them "
                                         rf"\(rm {latest} {previous}\) and rerun to train from step 0"):
        train(tmp_path, LeastSquares(), name="cut")
    assert latest.exists() and previous.exists(), "files are deleted by the user, not behind their back"
