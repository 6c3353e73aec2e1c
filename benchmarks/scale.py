"""Memory and time of infer_cam, pseudo_labels and evaluate as the number of images grows.

    python -m benchmarks.scale --sizes 1000 10000 [--workdir DIR] [--pseudo-workers 1 2]

The stages stream images and HDF5 entries, so their peak memory must not grow with the split;
their time should grow linearly. This script makes one toy set as large as the largest size
(small images, 64..96 px; the toy generator draws every image from its own seed, so the first N
images of a large set are the N images of a small one), gives each size an index holding the
first N ids of ``train_aug`` and of ``val``, trains a tiny CAM network and a tiny segmenter
once (a few steps: the weights do not matter for memory), then runs, for every size,

    infer_cam (train_aug) -> pseudo_labels (train_aug, per --pseudo-workers) -> evaluate (val)

each as ``python -m stages.<name>`` under a fresh measuring process of this script. Peak RSS is
reported three ways: ``peak`` is the kernel's high-water mark of the largest single process of
the stage (getrusage of the waited-for children; pool workers killed at the end may be left
out, the tree column covers them); ``above import`` subtracts the peak of a
process that only imports the stage module (importing the CUDA build of torch and timm alone
costs several hundred MiB, which would hide any growth); ``tree`` is the largest sum over the
stage's whole process tree, sampled from /proc every 50 ms (pages shared by forked workers are
counted once per process, so it is an upper bound). Time is wall time and CPU time (user +
system of the whole tree); ``CPU ms / image`` leaves out the CPU time of importing the module,
and on a machine shared with other jobs it is the steadier measure of linearity. Stage logs
are kept next to the outputs; the rows also go to ``scale.json`` and the tables to ``scale.md``.

Stages run with ``--threads`` intra-op threads (default 1): on a machine that other jobs also
use, two OpenMP threads per process can run ten times slower than one, which would make the
time ratios measure the neighbours instead of the stages.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

from stages.runtime.settings import TrainSettings, training_argv

REPO = Path(__file__).resolve().parents[1]
TOY = dict(num_classes=8, min_size=64, max_size=96, seed=0)
TRAIN = training_argv(TrainSettings(crop_size=64, batch_size=8, steps=5))  # the rest at the schema's defaults
# The schema's defaults, so the measured work per image is what a default run does.
INFER = ["--scales", "1.0", "0.5", "1.5", "--flip"]
PSEUDO = ["--threshold", "0.25", "--ignore-band", "0.05", "--use-crf", "--iterations", "10", "--gaussian-sxy", "3",
          "--gaussian-compat", "3", "--bilateral-sxy", "50", "--bilateral-srgb", "5", "--bilateral-compat", "10"]
EVALUATE = ["--scales", "1.0", "0.75", "1.25", "--flip", "--no-crf", "--panels", "4"]
SAMPLE_SECONDS = 0.05


def flags(options: dict[str, object]) -> list[str]:
    out: list[str] = []
    for key, value in options.items():
        out.append("--" + key.replace("_", "-"))
        if isinstance(value, list):
            out.extend(str(v) for v in value)
        else:
            out.append(str(value))
    return out


# --- the measuring process: runs one command as its child and reports its peak memory ---------

def _tree(pid: int) -> list[int]:
    """A process and all its descendants (Linux /proc; just ``pid`` elsewhere)."""
    found, todo = [], [pid]
    while todo:
        p = todo.pop()
        found.append(p)
        try:
            with open(f"/proc/{p}/task/{p}/children") as f:
                todo.extend(int(c) for c in f.read().split())
        except OSError:
            pass
    return found


def _sample(pid: int) -> tuple[int, float]:
    """(resident KiB, CPU seconds so far) of one process; zeros once it is gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            rss = next((int(line.split()[1]) for line in f if line.startswith("VmRSS:")), 0)
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return rss, (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime
    except (OSError, IndexError, ValueError):
        return 0, 0.0


def measure(cmd: list[str], log: Path) -> dict[str, float]:
    """Run ``cmd`` to completion: wall and CPU time, largest single-process peak, sampled tree peak.

    CPU time is the larger of getrusage's and the sum of the last /proc sample of every process
    seen: pool workers that are killed at the end are not always counted by getrusage.
    """
    log.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    tree_peak, cpu_seen = 0, {}
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=out, stderr=subprocess.STDOUT)
        while proc.poll() is None:
            samples = {p: _sample(p) for p in _tree(proc.pid)}
            tree_peak = max(tree_peak, sum(rss for rss, _ in samples.values()))
            cpu_seen.update({p: cpu for p, (_, cpu) in samples.items() if cpu})
            time.sleep(SAMPLE_SECONDS)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed with status {proc.returncode}; see {log}")
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return {"wall_s": wall, "cpu_s": max(usage.ru_utime + usage.ru_stime, sum(cpu_seen.values())),
            "rss_max_mib": usage.ru_maxrss / 1024, "rss_tree_mib": tree_peak / 1024}  # ru_maxrss: KiB on Linux


# --- the driver --------------------------------------------------------------------------------

def stage(name: str, *args: object) -> list[str]:
    return [sys.executable, "-m", f"stages.{name}", *map(str, args)]


def run_measured(cmd: list[str], log: Path, threads: int) -> dict[str, float]:
    """``measure`` in a fresh process, so getrusage sees this stage's processes and no others."""
    wrapper = [sys.executable, str(Path(__file__).resolve()), "--measure", str(log), "--", *cmd]
    proc = subprocess.run(wrapper, cwd=REPO, capture_output=True, text=True, env=stage_env(threads))
    if proc.returncode != 0:
        raise SystemExit(proc.stderr.strip() or f"measuring {cmd} failed")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run(cmd: list[str], log: Path, threads: int) -> None:
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("w") as out:
        if subprocess.run(cmd, cwd=REPO, stdout=out, stderr=subprocess.STDOUT, env=stage_env(threads)).returncode:
            raise SystemExit(f"{' '.join(cmd)} failed; see {log}")


def stage_env(threads: int) -> dict[str, str]:
    """How the workflow starts a stage (repository on PYTHONPATH, offline), with ``threads`` pinned."""
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
    if threads > 0:
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(threads)
    return env


def toy_index(workdir: Path, size: int, threads: int) -> Path:
    """The toy set's index (made once, as large as ``size``), reused when it is large enough."""
    index = workdir / "toy" / "index.json"
    if index.exists():
        data = json.loads(index.read_text())
        if min(len(data["splits"]["train_aug"]), len(data["splits"]["val"])) >= size:
            return index
    print(f"generating a toy set of {size} train_aug + {size} val images ...", file=sys.stderr, flush=True)
    run(stage("prepare_dataset", "--kind", "toy", "--root", workdir / "toy" / "data", "--index", index,
              "--num-train-aug", size, "--num-train", min(size, 100), "--num-val", size, "--no-progress",
              *flags(TOY)), workdir / "toy" / "prepare.log", threads)
    return index


def subset_index(full: Path, size: int, out: Path) -> Path:
    """The first ``size`` ids of train_aug and val (and their labels), in the index JSON format."""
    data = json.loads(full.read_text())
    splits = {"train_aug": data["splits"]["train_aug"][:size], "train": data["splits"]["train"][:size],
              "val": data["splits"]["val"][:size]}
    keep = set(splits["train_aug"]) | set(splits["val"])
    data["splits"] = splits
    data["labels"] = {i: c for i, c in data["labels"].items() if i in keep}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(data))
    return out


def import_floor(module: str, log: Path, threads: int) -> dict[str, float]:
    """Peak RSS and CPU time of a process that only imports ``stages.<module>``: the floor under every size."""
    return run_measured([sys.executable, "-c", f"import stages.{module}"], log, threads)


def train_models(full: Path, size: int, workdir: Path, pseudo_workers: int, threads: int) -> tuple[Path, Path]:
    """A CAM network and a segmenter trained for a few steps on the first ``size`` images (once)."""
    out = workdir / "models"
    cam, seg = out / "cam.pt", out / "seg.pt"
    index = subset_index(full, size, out / "index.json")
    if not cam.exists():
        run(stage("train_cam", "--index", index, "--split", "train_aug", "--out", cam,
                  "--checkpoint", out / "cam_ckpt.pt", "--metrics", out / "cam_metrics.csv", "--backbone", "resnet18",
                  "--weights", "none", "--pooling", "gap", *TRAIN, "--device", "cpu"),
            out / "train_cam.log", threads)
    if not seg.exists():
        cams, pseudo = out / "cams.h5", out / "pseudo"
        run(stage("infer_cam", "--index", index, "--checkpoint", cam, "--split", "train_aug", *INFER,
                  "--device", "cpu", "--out", cams), out / "infer_cam.log", threads)
        run(stage("pseudo_labels", "--index", index, "--cams", cams, "--split", "train_aug", *PSEUDO,
                  "--workers", pseudo_workers, "--out-dir", pseudo), out / "pseudo_labels.log", threads)
        run(stage("train_seg", "--index", index, "--split", "train_aug", "--method", "ce", "--pseudo-labels", pseudo,
                  "--backbone", "resnet18", "--weights", "none", "--decoder", "aspp", "--out", seg,
                  "--checkpoint", out / "seg_ckpt.pt", "--metrics", out / "seg_metrics.csv", *TRAIN,
                  "--device", "cpu"), out / "train_seg.log", threads)
    return cam, seg


def benchmark(sizes: list[int], workdir: Path, pseudo_workers: list[int], threads: int) -> list[dict[str, object]]:
    """One row per (stage, size): wall time, peak RSS, peak above the import floor, tree peak."""
    full = toy_index(workdir, max(sizes), threads)
    cam_model, seg_model = train_models(full, min(min(sizes), 200), workdir, max(pseudo_workers), threads)
    floors = {m: import_floor(m, workdir / "import" / f"{m}.log", threads)
              for m in ("infer_cam", "pseudo_labels", "evaluate")}
    rows: list[dict[str, object]] = []
    for size in sorted(sizes):
        out = workdir / f"n{size}"
        index = subset_index(full, size, out / "index.json")
        cams = out / "cams_train_aug.h5"
        commands = {"infer_cam": stage("infer_cam", "--index", index, "--checkpoint", cam_model, "--split",
                                       "train_aug", *INFER, "--device", "cpu", "--out", cams)}
        for workers in pseudo_workers:
            commands[f"pseudo_labels w{workers}"] = stage(
                "pseudo_labels", "--index", index, "--cams", cams, "--split", "train_aug", *PSEUDO,
                "--workers", workers, "--out-dir", out / f"pseudo_w{workers}")
        commands["evaluate"] = stage(
            "evaluate", "--index", index, "--checkpoint", seg_model, "--split", "val", *EVALUATE, "--device", "cpu",
            "--out-metrics", out / "eval" / "metrics.csv", "--out-per-class", out / "eval" / "per_class.csv",
            "--out-predictions", out / "eval" / "predictions", "--out-panels", out / "eval" / "panels")
        for name, cmd in commands.items():
            print(f"{size} images: {name} ...", file=sys.stderr, flush=True)
            result = run_measured(cmd, out / f"{name.replace(' ', '_')}.log", threads)
            floor = floors[name.split()[0]]
            result["above_import_mib"] = result["rss_max_mib"] - floor["rss_max_mib"]
            result["cpu_work_s"] = result["cpu_s"] - floor["cpu_s"]
            rows.append({"stage": name, "size": size, **result})
            print(f"  {result['wall_s']:.1f} s ({result['cpu_s']:.1f} s CPU), peak RSS {result['rss_max_mib']:.0f} MiB "
                  f"({result['above_import_mib']:.0f} above import), tree {result['rss_tree_mib']:.0f} MiB",
                  file=sys.stderr, flush=True)
    return rows


def report(rows: list[dict[str, object]]) -> str:
    """Markdown: one line per stage and size, then the ratios of the largest size to the smallest."""
    lines = ["| stage | images | wall (s) | CPU (s) | CPU ms / image | peak RSS (MiB) | above import (MiB) | "
             "tree (MiB) |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['stage']} | {r['size']} | {r['wall_s']:.1f} | {r['cpu_s']:.1f} | "
                     f"{1000 * r['cpu_work_s'] / r['size']:.1f} | {r['rss_max_mib']:.0f} | "
                     f"{r['above_import_mib']:.0f} | {r['rss_tree_mib']:.0f} |")
    sizes = sorted({r["size"] for r in rows})
    if len(sizes) < 2:
        return "\n".join(lines)
    lo, hi = sizes[0], sizes[-1]
    lines += ["", f"| stage | images {hi}/{lo} | wall | CPU | CPU per image | peak RSS | peak RSS growth (MiB) | "
                  "tree |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    by = {(r["stage"], r["size"]): r for r in rows}
    for name in dict.fromkeys(r["stage"] for r in rows):
        a, b = by[(name, lo)], by[(name, hi)]
        cpu = b["cpu_work_s"] / a["cpu_work_s"]
        lines.append(f"| {name} | {hi / lo:g} | {b['wall_s'] / a['wall_s']:.2f} | {cpu:.2f} | {cpu * lo / hi:.2f} | "
                     f"{b['rss_max_mib'] / a['rss_max_mib']:.2f} | {b['rss_max_mib'] - a['rss_max_mib']:+.0f} | "
                     f"{b['rss_tree_mib'] / a['rss_tree_mib']:.2f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--measure"]:  # the wrapper mode of run_measured: --measure LOG -- COMMAND...
        print(json.dumps(measure(argv[argv.index("--") + 1:], Path(argv[1]))))
        return
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", type=int, nargs="+", required=True, help="numbers of images to compare")
    p.add_argument("--workdir", type=Path, default=REPO / "benchmarks" / "out" / "scale",
                   help="where the toy set, models and outputs go (toy set and models are reused)")
    p.add_argument("--pseudo-workers", type=int, nargs="+", default=[1, 2], help="pseudo_labels --workers values")
    p.add_argument("--threads", type=int, default=1, help="intra-op threads per stage process (0: torch's default)")
    args = p.parse_args(argv)
    workdir = args.workdir.resolve()
    rows = benchmark(args.sizes, workdir, args.pseudo_workers, args.threads)
    (workdir / "scale.json").write_text(json.dumps(rows, indent=1) + "\n")
    table = report(rows)
    (workdir / "scale.md").write_text(table + "\n")
    print(table)


if __name__ == "__main__":
    main()
