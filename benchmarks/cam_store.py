"""HDF5 CAM store vs one .npy file per image: bytes on disk, write time, random read of one image.

    python -m benchmarks.cam_store [--voc ../shared/data/voc-sample] [--reads 300]

The CAMs are made from the sample's ground-truth masks the way a network makes them: each
present class's mask is averaged over a stride-16 grid, perturbed, upsampled bilinearly to the
image size, ReLU'd and max-normalised; they are as smooth as real CAMs, which is what decides
how well they compress. ``--cams FILE.h5`` benchmarks the entries of an existing CAM file instead.
Cold reads drop each file from the page cache first (posix_fadvise), as on a cluster file system
where the data is not in memory.
"""
from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np
import torch
import torch.nn.functional as F

from stages.data.voc_folder import read_voc_folder
from stages.io.cam_store import CamFileMeta, CamReader, CamWriter
from stages.io.label_png import read_label

VOC_SAMPLE = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "voc-sample"
STRIDE = 16


def cams_like_real(mask: np.ndarray, classes: list[int], rng: np.random.Generator) -> np.ndarray:
    """(K, H, W) float32 CAMs for ``classes`` from a label mask: coarse, noisy, upsampled."""
    h, w = mask.shape
    planes = torch.from_numpy(np.stack([(mask == c) for c in classes]).astype(np.float32))[None]
    coarse = F.adaptive_avg_pool2d(planes, ((h + STRIDE - 1) // STRIDE, (w + STRIDE - 1) // STRIDE))
    coarse = coarse + 0.3 * torch.from_numpy(rng.standard_normal(coarse.shape, dtype=np.float32))
    cams = F.interpolate(coarse, size=(h, w), mode="bilinear", align_corners=False)[0].relu()
    return (cams / (cams.amax(dim=(1, 2), keepdim=True) + 1e-5)).numpy()


def sample_cams(voc: Path) -> dict[str, tuple[np.ndarray, list[int]]]:
    index = read_voc_folder(voc, "auto")
    rng = np.random.default_rng(0)
    ids = sorted({i for s in ("train", "val") for i in index.ids(s)})
    return {i: (cams_like_real(read_label(index.mask_path(i, "train")), index.labels[i], rng), index.labels[i])
            for i in ids}


def file_cams(path: Path) -> dict[str, tuple[np.ndarray, list[int]]]:
    with CamReader(path) as reader:
        return {i: (e.cams, e.class_indices.tolist()) for i, e in reader.entries()}


def disk_bytes(paths: list[Path]) -> tuple[int, int]:
    """(apparent size, allocated blocks): many small files also pay for partly used blocks."""
    stats = [p.stat() for p in paths]
    return sum(s.st_size for s in stats), sum(s.st_blocks * 512 for s in stats)


def drop_from_cache(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def time_reads(read, ids: list[str], cold_paths) -> float:
    """Mean seconds per read; ``cold_paths(id)`` gives the files to evict before each read, or None."""
    total = 0.0
    for image_id in ids:
        if cold_paths is not None:
            for p in cold_paths(image_id):
                drop_from_cache(p)
        start = time.perf_counter()
        read(image_id)
        total += time.perf_counter() - start
    return total / len(ids)


def write_format_1(path: Path, meta: CamFileMeta, cams: dict) -> None:
    """The store as format 1 wrote it (float16, one gzip+shuffle chunk per entry): the baseline."""
    with h5py.File(path, "w") as f:
        f.attrs.update({**meta.to_attrs(), "format_version": 1, "num_images": len(cams)})
        group = f.create_group("cams")
        for image_id, (c, classes) in cams.items():
            ds = group.create_dataset(image_id, data=c.astype(np.float16), chunks=c.shape, shuffle=True,
                                      compression="gzip", compression_opts=1)
            ds.attrs["class_indices"] = np.asarray(classes, np.int16)
            ds.attrs["height"], ds.attrs["width"] = c.shape[1:]


def h5_rows(work: Path, meta: CamFileMeta, cams: dict, read_ids: list[str]) -> list[tuple]:
    """(name, bytes, blocks, write s, raw read s, float32 read s, cold s) for both store formats."""
    rows = []
    for name, path in (("HDF5 store, format 2 (uint8)", work / "cams.h5"),
                       ("HDF5 store, format 1 (f16 gzip)", work / "cams_v1.h5")):
        start = time.perf_counter()
        if path.name == "cams.h5":
            with CamWriter(path, meta) as writer:
                for image_id, (c, classes) in cams.items():
                    writer.write(image_id, c, classes)
        else:
            write_format_1(path, meta, cams)
        write = time.perf_counter() - start
        with CamReader(path) as reader, h5py.File(path, "r") as plain:
            raw = time_reads(lambda i: plain["cams"][i][()], read_ids, None)
            as_float = time_reads(reader.read, read_ids, None)
            cold = time_reads(reader.read, read_ids, lambda _: [path])
        rows.append((name, *disk_bytes([path]), write, raw, as_float, cold))
    return rows


def npy_rows(work: Path, cams: dict, read_ids: list[str]) -> list[tuple]:
    """The same columns for one .npy file per image (plus its class list), float32 and float16."""
    rows = []
    for dtype in (np.float32, np.float16):
        folder = work / f"npy_{np.dtype(dtype).name}"
        folder.mkdir()
        start = time.perf_counter()
        for image_id, (c, classes) in cams.items():
            np.save(folder / f"{image_id}.npy", c.astype(dtype))
            np.save(folder / f"{image_id}.classes.npy", np.asarray(classes, np.int16))
        write = time.perf_counter() - start

        def read_npy(image_id: str, folder: Path = folder) -> np.ndarray:
            np.load(folder / f"{image_id}.classes.npy")
            return np.load(folder / f"{image_id}.npy")

        pair = lambda i, folder=folder: [folder / f"{i}.npy", folder / f"{i}.classes.npy"]  # noqa: E731
        rows.append((f".npy per image ({np.dtype(dtype).name})", *disk_bytes(sorted(folder.iterdir())), write,
                     time_reads(read_npy, read_ids, None),
                     time_reads(lambda i, r=read_npy: r(i).astype(np.float32), read_ids, None),
                     time_reads(read_npy, read_ids, pair)))
    return rows


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--voc", type=Path, default=VOC_SAMPLE, help="VOC-layout folder with masks")
    p.add_argument("--cams", type=Path, help="benchmark the entries of this CAM file instead")
    p.add_argument("--reads", type=int, default=300, help="random single-image reads to time")
    args = p.parse_args(argv)
    cams = file_cams(args.cams) if args.cams else sample_cams(args.voc)
    ids = list(cams)
    pixels = sum(c.shape[0] * c.shape[1] * c.shape[2] for c, _ in cams.values())
    print(f"{len(ids)} images, {pixels / len(ids) / 1e3:.0f}k CAM values per image on average")
    meta = CamFileMeta("bench", "train", tuple(f"c{i}" for i in range(21)), "none", (1.0,), False, "-")
    work = Path(tempfile.mkdtemp(prefix="cam_store_bench_"))
    rng = np.random.default_rng(1)
    read_ids = [ids[i] for i in rng.integers(0, len(ids), args.reads)]
    try:
        rows = h5_rows(work, meta, cams, read_ids) + npy_rows(work, cams, read_ids)
    finally:
        shutil.rmtree(work)

    base = rows[2][1]
    f16 = rows[3]
    print(f"{'store':32s} {'bytes':>10s} {'on disk':>10s} {'vs npy32':>8s} {'write s':>8s} "
          f"{'read ms':>8s} {'f32 ms':>8s} {'cold ms':>8s}")
    for name, size, blocks, write, raw, as_float, cold in rows:
        print(f"{name:32s} {size / 1e6:9.1f}M {blocks / 1e6:9.1f}M {size / base:8.2f} {write:8.2f} "
              f"{raw * 1e3:8.2f} {as_float * 1e3:8.2f} {cold * 1e3:8.2f}")
    print("read ms: one random entry as stored, from an open store / the files (warm page cache); f32 ms: the "
          "same as the float32 CAMs the stages use (the store's CamReader.read); cold ms: CamReader.read / "
          "np.load after evicting the file(s) from the page cache")
    store = rows[0]
    print(f"format 2 vs float16 .npy: bytes x{store[1] / f16[1]:.2f} of float16 (x{store[1] / base:.2f} of "
          f"float32), read as stored x{store[4] / f16[4]:.2f}, read as float32 x{store[5] / f16[5]:.2f}; "
          f"vs format 1: read as float32 x{store[5] / rows[1][5]:.2f}")


if __name__ == "__main__":
    main()
