"""Where a workflow run's time went: wall time, job time and each job's seconds, runs side by side.

    python -m benchmarks.run_times DIR [DIR ...]

Each DIR is a working directory Snakemake ran in (``results/benchmarks/*.tsv``, one per job, and
``.snakemake/log/``, whose newest log gives the wall time from the first job's start to the last
job's end). Prints one row per job (seconds, from the benchmark files), the job-seconds total,
the wall time, and each job's start and end in the last run, which show its critical path. The
ratio column compares the last run with the first.
"""
from __future__ import annotations

import argparse
import re
from datetime import datetime
from pathlib import Path

import pandas as pd

_STAMP = re.compile(r"\[(\w+ \w+ +\d+ [\d:]+ \d+)\]")
_JOB = re.compile(r"(?:local)?rule (\w+):")
_FINISHED = re.compile(r"Finished jobid: (\d+)")


def job_seconds(run: Path) -> dict[str, float]:
    """Seconds per job from Snakemake's benchmark files (``<rule>-<wildcards>.tsv``)."""
    return {str(path.relative_to(run / "results" / "benchmarks").with_suffix("")):
            float(pd.read_csv(path, sep="\t")["s"].iloc[-1])
            for path in sorted((run / "results" / "benchmarks").rglob("*.tsv"))}


def timeline(run: Path) -> tuple[float, list[tuple[float, float, str]]]:
    """Wall seconds of the newest Snakemake log, and (start, end, rule + wildcards) per job."""
    lines = sorted((run / ".snakemake" / "log").glob("*.log"))[-1].read_text().splitlines()
    now = first = None
    started: dict[str, tuple[float, str]] = {}
    jobs = []
    for i, line in enumerate(lines):
        stamp = _STAMP.match(line)
        if stamp:
            now = datetime.strptime(stamp.group(1), "%a %b %d %H:%M:%S %Y")
            first = first or now
            continue
        job, done = _JOB.match(line), _FINISHED.match(line)
        if job and now is not None:
            jobid, wildcards = None, ""
            for follow in lines[i + 1:i + 16]:
                if _JOB.match(follow) or _STAMP.match(follow):
                    break
                key, _, value = follow.strip().partition(": ")
                jobid = value if key == "jobid" and jobid is None else jobid
                wildcards = value if key == "wildcards" else wildcards
            started[jobid] = ((now - first).total_seconds(), f"{job.group(1)} {wildcards}".strip())
        elif done and done.group(1) in started:
            start, name = started.pop(done.group(1))
            jobs.append((start, (now - first).total_seconds(), name))
    return (now - first).total_seconds(), sorted(jobs)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", type=Path, nargs="+", help="working directories of finished runs")
    runs = p.parse_args().runs
    table = pd.DataFrame({str(run): job_seconds(run) for run in runs})
    print("| job | " + " | ".join(str(r) for r in runs) + " | last / first |")
    print("|---|" + "---|" * (len(runs) + 1))
    for job, row in table.iterrows():
        print(f"| `{job}` | " + " | ".join(f"{v:.1f}" for v in row) + f" | {row.iloc[-1] / row.iloc[0]:.2f} |")
    for name, values in (("job seconds (sum)", list(table.sum())), ("wall", [timeline(run)[0] for run in runs])):
        print(f"| {name} | " + " | ".join(f"{v:.0f}" for v in values) + f" | {values[-1] / values[0]:.2f} |")
    print(f"\njobs of {runs[-1]} (start, end in seconds of wall time):")
    for start, end, name in timeline(runs[-1])[1]:
        print(f"{start:6.0f} {end:6.0f}  {name}")


if __name__ == "__main__":
    main()
