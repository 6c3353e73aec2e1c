"""Run one experiment twice from nothing and compare everything it made, byte for byte.

    python benchmarks/reproducibility.py --configfile tests/config/tiny.yaml --cores 2
    python benchmarks/reproducibility.py --configfile config.yaml --cores 2 --second-cores 1

Each run is a fresh ``snakemake --cores N`` in its own folder under ``benchmarks/out/repro/``.
The script then prints, per artifact kind, how many files are identical: model weights (every
tensor of every ``model.pt``), label PNGs (pseudo labels and predictions, as pixel arrays), CAM
HDF5 entries, and the metric CSVs (timing columns left out). ``--second-cores`` runs the second
time with another core count: every rule's thread count follows it (Snakemake caps a rule's
``threads`` at ``--cores``), which shows what the thread count changes.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
TIMING_COLUMNS = {"img_per_s", "s", "h:m:s", "max_rss", "max_vms", "max_uss", "max_pss", "io_in", "io_out",
                  "mean_load", "cpu_time", "seconds"}


def run(workdir: Path, configfile: Path, cores: int) -> float:
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    tic = time.perf_counter()
    # the rules run `python -m stages.<name>`: that python must be this environment's
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    subprocess.run([sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), "--directory",
                    str(workdir), "--configfile", str(configfile.resolve()), "--cores", str(cores), "--quiet"],
                   cwd=REPO, env=env, check=True)
    return time.perf_counter() - tic


def same_weights(a: Path, b: Path) -> bool:
    x, y = torch.load(a, weights_only=True)["model"], torch.load(b, weights_only=True)["model"]
    return x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)


def same_png(a: Path, b: Path) -> bool:
    return np.array_equal(np.asarray(Image.open(a)), np.asarray(Image.open(b)))


def same_h5(a: Path, b: Path) -> bool:
    with h5py.File(a, "r") as x, h5py.File(b, "r") as y:
        keys = sorted(x["cams"])
        return keys == sorted(y["cams"]) and all(np.array_equal(x["cams"][k][()], y["cams"][k][()]) for k in keys)


def same_csv(a: Path, b: Path) -> bool:
    x, y = pd.read_csv(a, sep=None, engine="python"), pd.read_csv(b, sep=None, engine="python")
    drop = [c for c in x.columns if c in TIMING_COLUMNS]
    return x.drop(columns=drop).equals(y.drop(columns=[c for c in y.columns if c in TIMING_COLUMNS]))


KINDS = {  # kind -> (glob under results/, comparison)
    "model weights": ("**/model.pt", same_weights),
    "label PNGs": ("**/*.png", same_png),
    "CAM files": ("**/cams_*.h5", same_h5),
    "metric CSVs": ("**/*.csv", same_csv),
}
SKIP = ("benchmarks", "summary", "logs")  # wall times, and plots drawn from them


def compare(first: Path, second: Path) -> list[tuple[str, int, int, list[str]]]:
    rows = []
    for kind, (pattern, same) in KINDS.items():
        files = [p for p in sorted((first / "results").glob(pattern))
                 if not set(SKIP) & set(p.relative_to(first).parts)
                 and not (kind == "label PNGs" and "panels" in p.relative_to(first).parts)]
        differ = [str(p.relative_to(first)) for p in files if not same(p, second / p.relative_to(first))]
        rows.append((kind, len(files), len(files) - len(differ), differ))
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--configfile", type=Path, required=True)
    p.add_argument("--cores", type=int, default=2)
    p.add_argument("--second-cores", type=int, help="core count of the second run (default: --cores)")
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "out" / "repro")
    args = p.parse_args()
    second_cores = args.second_cores or args.cores
    times = [run(args.out / "first", args.configfile, args.cores),
             run(args.out / "second", args.configfile, second_cores)]
    print(f"config {args.configfile}; runs with --cores {args.cores} and {second_cores}: "
          f"{times[0]:.0f} s and {times[1]:.0f} s")
    print("| artifacts | files | identical | first that differ |\n|---|---|---|---|")
    for kind, n, same, differ in compare(args.out / "first", args.out / "second"):
        print(f"| {kind} | {n} | {same} | {', '.join(differ[:3]) or '-'} |")


if __name__ == "__main__":
    main()
