"""The codebase's habits, checked as a reviewer would: ruff (errors, warnings, import order) on the
Python, snakefmt on the rule files, and Snakemake's own linter, whose remaining lints are the two
docs/development.md explains."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from conftest import REPO, TINY_CONFIG, pipeline_env

BIN = Path(sys.executable).parent
# Lints that stay, each explained in docs/development.md: a workflow-level `conda:` directive
# covers every rule, and `PYTHON + " stages.x ..."` builds a shell command, not a path.
EXPLAINED_LINTS = {"Specify a conda environment or container for each rule.", "Path composition with '+'"}


def _run(*cmd: str) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=REPO, env=pipeline_env(), capture_output=True, text=True, timeout=300)


def test_ruff_is_clean() -> None:
    done = _run(str(BIN / "ruff"), "check", "stages", "tests", "benchmarks")
    assert done.returncode == 0, done.stdout[-4000:]


def test_rule_files_are_snakefmt_formatted() -> None:
    done = _run(str(BIN / "snakefmt"), "--check", "Snakefile", "workflow/rules")
    assert done.returncode == 0, done.stderr[-4000:]


def test_snakemake_lint_leaves_only_the_explained_lints(tmp_path: Path) -> None:
    done = _run(sys.executable, "-m", "snakemake", "--lint", "--snakefile", str(REPO / "Snakefile"),
                "--directory", str(tmp_path), "--configfile", str(TINY_CONFIG))
    titles = {re.sub(r" in line \d+:?$", "", m.strip(" *:")) for m in re.findall(r"^\s+\* (.+)$", done.stdout, re.M)}
    assert titles <= EXPLAINED_LINTS, titles - EXPLAINED_LINTS
