"""Record what a job sees -- GPUs, CUDA_VISIBLE_DEVICES, SLURM_* variables, host -- as JSON.

Run as a workflow job with the same resources as training, it shows a cluster user whether the
Slurm profile maps ``gpu=N`` to the devices they expect. Started by torchrun, every rank reports
and rank 0 writes them all: ``{"ranks": [{...}, ...]}`` (a single process gives a list of one).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import sys
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from stages.errors import run_stage
from stages.io.atomic import write_text
from stages.runtime.distributed import native_bf16

LAUNCH_VARIABLES = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT",
                    "CUDA_VISIBLE_DEVICES", "OMP_NUM_THREADS")


def device_report() -> dict[str, Any]:
    """This process's view of the machine."""
    cuda = torch.cuda.is_available()
    devices = []
    for i in range(torch.cuda.device_count() if cuda else 0):
        props = torch.cuda.get_device_properties(i)
        devices.append({"index": i, "name": props.name, "memory_gib": round(props.total_memory / 2**30, 1),
                        "capability": f"{props.major}.{props.minor}"})
    return {
        "hostname": socket.gethostname(),
        "pid": os.getpid(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda_available": cuda,
        "cuda_version": torch.version.cuda,
        "device_count": len(devices),
        "devices": devices,
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "torch_threads": torch.get_num_threads(),
        "cpu_native_bf16": native_bf16(torch.device("cpu")),  # what precision `auto` picks on this CPU
        "launch": {k: os.environ[k] for k in LAUNCH_VARIABLES if k in os.environ},
        "slurm": {k: v for k, v in sorted(os.environ.items()) if k.startswith("SLURM_")},
    }


def gather_reports() -> list[dict[str, Any]]:
    """Every rank's report (gloo: works whether or not the ranks have GPUs)."""
    if int(os.environ.get("WORLD_SIZE", "1")) == 1:
        return [device_report()]
    dist.init_process_group("gloo")
    try:
        reports: list[Any] = [None] * dist.get_world_size()
        dist.all_gather_object(reports, device_report())
        return reports
    finally:
        dist.destroy_process_group()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True, help="JSON file")
    args = p.parse_args(argv)
    reports = gather_reports()
    if int(os.environ.get("RANK", "0")) == 0:
        text = json.dumps({"ranks": reports}, indent=1) + "\n"
        write_text(args.out, text)
        print(text, file=sys.stderr)


if __name__ == "__main__":
    run_stage(main)
