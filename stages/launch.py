"""Start a stage on N GPUs: ``torchrun`` when N > 1, the plain interpreter otherwise.

Rules call ``python -m stages.launch --gpus {resources.gpu} stages.train_cam ...`` so that the GPU
count lives in the rule's resources (set per cluster in a profile) and changing it never changes
the rule's params, which would make Snakemake re-train.
"""
from __future__ import annotations

import argparse
import os
import runpy
import shutil
import sys


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gpus", type=int, required=True, help="processes to start (one per GPU)")
    parser.add_argument("module", help="stage module, e.g. stages.train_cam")
    parser.add_argument("args", nargs=argparse.REMAINDER, help="the stage's own arguments")
    opts = parser.parse_args(argv)
    if opts.gpus > 1:
        torchrun = shutil.which("torchrun") or "torchrun"
        os.execv(torchrun, [torchrun, "--standalone", f"--nproc_per_node={opts.gpus}",
                            "-m", opts.module, *opts.args])
    sys.argv = [opts.module, *opts.args]
    runpy.run_module(opts.module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
