"""The pip pins and the conda env file must name the same packages at the same versions."""
import re

import yaml

from conftest import REPO


def _pins(lines):
    pins = {}
    for line in lines:
        line = line.split("#")[0].strip()
        if line and not line.startswith("-"):
            name, version = re.split(r"==", line, maxsplit=1)
            pins[re.sub(r"\[.*\]", "", name).lower()] = version
    return pins


def test_conda_env_matches_pip_pins():
    pip_pins = _pins((REPO / "envs" / "requirements.txt").read_text().splitlines())
    env = yaml.safe_load((REPO / "envs" / "pipeline.yaml").read_text())
    conda_pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    conda_pins = _pins(conda_pip)
    for test_only in ("pytest", "selenium", "ruff", "snakefmt"):  # not needed inside rule environments
        pip_pins.pop(test_only)
    assert conda_pins == pip_pins


def test_torch_and_torchvision_are_pinned_exactly():
    pins = _pins((REPO / "envs" / "requirements.txt").read_text().splitlines())
    assert pins["torch"] == "2.14.1" and pins["torchvision"] == "0.29.1"
