"""Shared test fixtures: repository paths, the shared sample data, and running the real Snakemake."""
from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from stages.runtime.settings import TrainSettings

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
VOC_SAMPLE = SHARED_DATA / "voc-sample"
TINY_CONFIG = REPO / "tests" / "config" / "tiny.yaml"
NO_CONTROLLER_SLURM_CONF = REPO / "tests" / "config" / "no_controller.slurm.conf"


def pipeline_env(slurm: bool = False) -> dict[str, str]:
    """The environment a user has after `source .venv/bin/activate` in the repository: stage
    commands find `python`, and `python -m stages.<name>` works from any directory. Without
    ``slurm``, Slurm's tools see no controller at once (tests/config/no_controller.slurm.conf)."""
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONPATH"] = str(REPO)
    env["HF_HUB_OFFLINE"] = "1"
    if not slurm:
        env["SLURM_CONF"] = str(NO_CONTROLLER_SLURM_CONF)
    return env


def stage_argv(options: dict[str, object]) -> list[str]:
    """A stage's command line from {flag_name: value} (``crop_size`` -> ``--crop-size``); lists
    become several values, None leaves the flag out."""
    argv: list[str] = []
    for key, value in options.items():
        if value is None:
            continue
        argv.append("--" + key.replace("_", "-"))
        argv += [str(v) for v in value] if isinstance(value, list) else [str(value)]
    return argv


def train_options(**overrides: object) -> dict[str, object]:
    """Every training flag of a stage at ``TrainSettings``' default (the schema's), on the CPU, with
    ``overrides``: a test names only what it changes, and a new training setting needs no edit here."""
    values: dict[str, object] = {f.name: getattr(TrainSettings, f.name) for f in dataclasses.fields(TrainSettings)}
    values["scale_range"] = list(TrainSettings.scale_range)
    return {**values, "device": "cpu", **overrides}


def snakemake(workdir: Path, *args: str, config: Path | None = None, check: bool = True,
              cwd: Path = REPO, timeout: int = 900, slurm: bool = False) -> subprocess.CompletedProcess:
    """Run the real Snakemake on the repository's Snakefile with ``workdir`` holding results/;
    ``slurm`` for a run against the real Slurm the test started."""
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"),
           "--directory", str(workdir), *args]
    if config is not None:
        cmd += ["--configfile", str(config)]
    proc = subprocess.run(cmd, cwd=cwd, env=pipeline_env(slurm), capture_output=True, text=True,
                          timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"snakemake {' '.join(args)} failed ({proc.returncode}):\n"
                             f"{proc.stdout[-4000:]}\n{proc.stderr[-6000:]}")
    return proc


def write_config(path: Path, base: Path = TINY_CONFIG, **overrides) -> Path:
    """A copy of ``base`` with top-level sections replaced or merged one level deep."""
    config = yaml.safe_load(base.read_text())
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(config.get(key), dict):
            config[key] = {**config[key], **value}
        else:
            config[key] = value
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def planned_jobs(workdir: Path, config: Path, *args: str) -> dict[str, int]:
    """Rule name -> job count of a dry run (what Snakemake would run now); ``args`` are extra
    options or targets."""
    out = snakemake(workdir, *args, "-n", "--cores", "2", "--quiet", "rules", config=config).stdout
    jobs: dict[str, int] = {}
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].isdigit() and parts[0] not in ("total", "job"):
            jobs[parts[0]] = int(parts[1])
    return jobs


def sigkill_when(command: list[str], marker: Path, log: Path, timeout: float) -> None:
    """Start a stage, SIGKILL it as soon as ``marker`` exists (as an OOM killer would), and check it
    was killed rather than finished; its output goes to ``log``."""
    with open(log, "w") as out:
        proc = subprocess.Popen(command, env=pipeline_env(), stdout=out, stderr=out)
        deadline = time.monotonic() + timeout
        while not marker.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.002)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL, log.read_text()[-2000:]


def toy_with_gt_labels(root: Path, num_train_aug: int = 12, min_size: int = 48, max_size: int = 72,
                       labels: str = "pseudo") -> tuple[Path, Path]:
    """(index.json, label folder) of a 3-class toy set whose "pseudo labels" are its GT masks: a
    method trained on them has something true to learn."""
    from stages.data.toy import generate_toy
    from stages.gt_labels import write_gt_labels

    index = generate_toy(root / "data", num_classes=3, num_train_aug=num_train_aug, num_train=4, num_val=4,
                         min_size=min_size, max_size=max_size, seed=0)
    index.save(root / "index.json")
    write_gt_labels(index, "train_aug", root / labels, progress=False)
    return root / "index.json", root / labels


@pytest.fixture
def voc_sample() -> Path:
    if not (VOC_SAMPLE / "JPEGImages").is_dir():
        pytest.skip(f"shared sample data not found at {VOC_SAMPLE} (../shared beside the repo)")
    return VOC_SAMPLE


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> tuple[Path, Path]:
    """The tiny config run locally from nothing to the summary, once per test session."""
    workdir = tmp_path_factory.mktemp("tiny_run")
    cfg = write_config(workdir / "config.yaml")
    snakemake(workdir, "--cores", "2", config=cfg)
    return workdir, cfg
