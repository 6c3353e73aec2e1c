"""Reading stage CSVs and writing GitHub tables, shared by the summary and its sections."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import pandas as pd

from stages.errors import InputError


def read_csv(path: Path, columns: Sequence[str]) -> pd.DataFrame:
    """The CSV, or an error naming the columns a stage's output should have and lacks."""
    frame = pd.read_csv(path)
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise InputError(f"{path}: missing column(s) {', '.join(missing)} (has {', '.join(frame.columns)})")
    return frame


def to_markdown(table: pd.DataFrame) -> str:
    """A GitHub table: scores to 4 decimals, seconds to 1, empty cells where a row has no value."""
    def cell(column: str, value) -> str:
        if isinstance(value, float):
            if math.isnan(value):
                return ""
            return f"{value:.1f}" if column == "seconds" else f"{value:.4f}"
        return str(value)

    lines = ["| " + " | ".join(table.columns) + " |", "|" + "---|" * len(table.columns)]
    for row in table.itertuples(index=False):
        lines.append("| " + " | ".join(cell(c, v) for c, v in zip(table.columns, row)) + " |")
    return "\n".join(lines) + "\n"
