"""Multi-process paths on gloo: DDP gradients equal single-process ones; devices reports every rank.

The gradient test runs the real trainer loop (its own DDP wrapping and per-rank data split), the
real segmentation dataset and the ``ce`` step, once with 2 processes x batch B and once with
1 process x batch 2B over the same images, and compares the gradients left on the parameters.
Two things would legitimately differ and are kept out: BatchNorm batch statistics (per process on
CPU; train_seg uses SyncBatchNorm on GPUs) are removed by swapping BN for identity, and labels carry
no ignore pixels so each process averages the CE over the same number of pixels.
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
import torch.multiprocessing as mp
from torch import nn

from stages.data.index import DatasetIndex
from stages.data.segmentation import SegmentationDataset, label_dir_source
from stages.data.toy import generate_toy
from stages.data.transforms import AugmentConfig
from stages.io.label_png import read_label, write_label
from stages.methods.registry import get_method
from stages.models.segmenter import Segmenter, SegmenterSpec
from stages.runtime.distributed import distributed_session
from stages.runtime.settings import TrainSettings
from stages.runtime.trainer import train_loop

PER_RANK_BATCH = 2


def without_batchnorm(module: nn.Module) -> nn.Module:
    for name, child in module.named_children():
        if isinstance(child, nn.BatchNorm2d):
            setattr(module, name, nn.Identity())
        else:
            without_batchnorm(child)
    return module


def gradients_after_one_step(index_path: Path, labels: Path, out_dir: Path, batch_size: int) -> dict:
    """One training step through train_loop; returns {parameter name: gradient} of this process."""
    index = DatasetIndex.load(index_path)
    method = get_method("ce")
    torch.manual_seed(0)
    model = without_batchnorm(Segmenter(SegmenterSpec("resnet18", "mlp", index.num_classes)))
    ids = index.ids("train_aug")
    dataset = SegmentationDataset(index, "train_aug", label_dir_source(labels, ids),
                                  AugmentConfig(crop_size=40, scale_range=(1.0, 1.0)), seed=0)
    settings = TrainSettings(steps=1, batch_size=batch_size, checkpoint_every=1, lr=0.01, weight_decay=0.0)
    with distributed_session("cpu", "fp32") as ctx:  # to 1e-4: finer than bf16 rounds
        train_loop(model, method, dataset, settings, ctx, out_dir / f"ckpt{ctx.world_size}.pt",
                   out_dir / f"metrics{ctx.world_size}.csv", meta={})
    return {name: p.grad.clone() for name, p in model.named_parameters()}


def ddp_worker(rank: int, port: int, index_path: Path, labels: Path, out_dir: Path) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    grads = gradients_after_one_step(index_path, labels, out_dir, PER_RANK_BATCH)
    torch.save(grads, out_dir / f"grads_rank{rank}.pt")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_process_gradients_equal_one_process(tmp_path: Path) -> None:
    n_images = 2 * PER_RANK_BATCH  # one global batch: both runs see exactly the same images
    index = generate_toy(tmp_path / "data", num_classes=3, num_train_aug=n_images, num_train=1, num_val=1,
                         min_size=48, max_size=64, seed=2)
    index.save(tmp_path / "index.json")
    labels = tmp_path / "labels"
    for image_id in index.ids("train_aug"):
        mask = read_label(index.mask_path(image_id, "train_aug"))
        write_label(labels / f"{image_id}.png", np.where(mask == 255, 0, mask))

    mp.spawn(ddp_worker, args=(free_port(), tmp_path / "index.json", labels, tmp_path), nprocs=2, join=True)
    single = gradients_after_one_step(tmp_path / "index.json", labels, tmp_path, 2 * PER_RANK_BATCH)

    ranks = [torch.load(tmp_path / f"grads_rank{r}.pt") for r in (0, 1)]
    assert ranks[0].keys() == single.keys()
    for name, grad in single.items():
        assert torch.equal(ranks[0][name], ranks[1][name]), f"{name}: ranks disagree after all-reduce"
        assert torch.allclose(ranks[0][name], grad, rtol=1e-4, atol=1e-6), \
            f"{name}: max diff {(ranks[0][name] - grad).abs().max():.3g}"
    assert any(g.abs().sum() > 0 for g in single.values())


def test_devices_reports_every_rank(tmp_path: Path) -> None:
    torchrun = Path(sys.executable).parent / "torchrun"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1]), "SLURM_JOB_ID": "42"}
    done = subprocess.run([str(torchrun), "--standalone", "--nproc_per_node=2", "-m", "stages.devices",
                           "--out", str(tmp_path / "devices.json")], env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    ranks = json.loads((tmp_path / "devices.json").read_text())["ranks"]
    assert [r["launch"]["RANK"] for r in ranks] == ["0", "1"]
    assert all(r["slurm"]["SLURM_JOB_ID"] == "42" for r in ranks)
    assert {"hostname", "device_count", "devices", "cuda_available"} <= ranks[0].keys()
