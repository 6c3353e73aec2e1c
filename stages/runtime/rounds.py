"""Runs made of rounds (PL-Mix's refinement, exploration schedules): a state folder that resumes
at any round.

State folder::

    meta.json              the settings the rounds belong to; other settings start over
    round<r>/...           whatever round r writes (labels, the trainer's checkpoint, a model)
    round<r>/summary.json  the round's row; written last, it marks the round as done

A round does not depend on how many follow, so the round count stays out of ``meta``: asking for
more rounds continues a finished run, asking for fewer stops at an earlier round.
"""
from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from typing import Any

from stages.io.atomic import write_text
from stages.runtime.distributed import DistContext, barrier


class RoundStore:
    """The state folder of a run in rounds; rank 0 writes, every rank reads."""

    def __init__(self, state_dir: Path, meta: dict[str, Any], ctx: DistContext) -> None:
        self.dir, self.ctx = Path(state_dir), ctx
        meta = json.loads(json.dumps(meta))  # as JSON reads it back: tuples become lists
        meta_path = self.dir / "meta.json"
        if ctx.is_main:
            old = json.loads(meta_path.read_text()) if meta_path.is_file() else None
            if old != meta:
                stale = [p for p in self.dir.glob("round*") if p.is_dir()]
                if stale:
                    print(f"{self.dir} holds rounds made with other settings; starting from round 1",
                          file=sys.stderr)
                for p in stale:
                    shutil.rmtree(p)
                write_text(meta_path, json.dumps(meta, indent=1, sort_keys=True) + "\n")
        barrier(ctx)

    def round_dir(self, r: int) -> Path:
        return self.dir / f"round{r}"

    def completed(self, rounds: int) -> list[dict[str, Any]]:
        """Rows of the consecutive rounds 1..k (k <= rounds) that finished."""
        rows = []
        for r in range(1, rounds + 1):
            summary = self.round_dir(r) / "summary.json"
            if not summary.is_file():
                break
            rows.append(json.loads(summary.read_text()))
        return rows

    def finish(self, r: int, row: dict[str, Any]) -> None:
        """Mark round ``r`` done with its row (rank 0), once everything else of it is written."""
        if self.ctx.is_main:
            write_text(self.round_dir(r) / "summary.json", json.dumps(row, indent=1) + "\n")
        barrier(self.ctx)
