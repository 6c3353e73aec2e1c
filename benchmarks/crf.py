"""Dense CRF cost: present classes + background vs all 21 labels, 1 vs 2 worker processes, and
the CRF at full against reduced resolution (``CRFParams.scale``).

    python -m benchmarks.crf [--voc ../shared/data/voc-aug] [--images 40]
    python -m benchmarks.crf --only scale --cams results/cam/cams_train_aug.h5 --threshold 0.32

Inputs are a VOC-layout folder's real images (real sizes) with CAMs made from their masks (see
benchmarks/cam_store.py). The label comparison makes pseudo labels with the ignore band (the CRF
at two thresholds, as the stage does by default) two ways on the same CAMs: the stage's own code
(``pseudo_label``: present classes + background, one lattice shared by both thresholds) and the
naive way (all 21 labels, a CRF built per threshold), and scores both against the masks (mIoU,
ignored pixels as background, as eval_pseudo's ``miou``). The process comparison runs the
pseudo-label stage's code (``generate_pseudo_labels``) on a CAM file of the whole train split.
The scale comparison makes the stage's pseudo labels at scales 1, 1/2 and 1/3, from a run's CAM
file when ``--cams`` names one (a ``voc_aug.yaml`` run's, at its best threshold), and scores
each against the masks and against the full-resolution labels.
"""
from __future__ import annotations

import argparse
import dataclasses
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.cam_store import VOC_SAMPLE, cams_like_real
from stages.cams.threshold import with_background
from stages.data.images import load_rgb
from stages.data.voc_folder import read_voc_folder
from stages.io.cam_store import CamEntry, CamFileMeta, CamReader, CamWriter
from stages.io.label_png import IGNORE, read_label
from stages.labels.crf import CRFParams, dense_crf, dense_crf_many
from stages.labels.pseudo import PseudoLabelSettings, generate_pseudo_labels, label_probabilities, pseudo_label
from stages.metrics.confusion import ConfusionMatrix

VOC_AUG = VOC_SAMPLE.parent / "voc-aug"
PARAMS = CRFParams(iterations=10, gaussian_sxy=3, gaussian_compat=3,
                   bilateral_sxy=50, bilateral_srgb=5, bilateral_compat=10)  # the config's defaults
THRESHOLD, BAND = 0.3, 0.05


def naive_label(image: np.ndarray, entry: CamEntry, num_classes: int) -> np.ndarray:
    """Pseudo label with the band, the CRF over all classes and built anew for each threshold."""
    lut = np.concatenate([[0], entry.class_indices])
    maps = []
    for t in (THRESHOLD - BAND, THRESHOLD + BAND):
        labels = lut[with_background(entry.cams, t).argmax(0)]
        probs = label_probabilities(labels, num_classes, num_classes)
        maps.append(dense_crf(image, probs, PARAMS).argmax(0).astype(np.uint8))
    low, high = maps
    low[low != high] = IGNORE
    return low


def irn_split_label(image: np.ndarray, entry: CamEntry) -> np.ndarray:
    """The stage's pseudo label, but with IRN's unary: the 0.3 off the label shared among the
    present labels only (what the stage did before; the comparison behind its choice)."""
    labels = len(entry.class_indices) + 1
    lut = np.concatenate([[0], entry.class_indices]).astype(np.uint8)
    channels = [with_background(entry.cams, t).argmax(0) for t in (THRESHOLD - BAND, THRESHOLD + BAND)]
    low, high = (lut[q.argmax(0)] for q in dense_crf_many(
        image, [label_probabilities(c, labels, labels) for c in channels], PARAMS))
    low[low != high] = IGNORE
    return low


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--voc", type=Path, default=VOC_AUG if VOC_AUG.is_dir() else VOC_SAMPLE)
    p.add_argument("--images", type=int, default=40, help="images for the label-count comparison")
    p.add_argument("--only", choices=("labels", "processes", "scale"), help="run one of the comparisons")
    p.add_argument("--cams", type=Path, help="scale comparison: a run's CAM file of the train images "
                                             "(default: CAMs made from the masks)")
    p.add_argument("--threshold", type=float, default=THRESHOLD, help="scale comparison: background threshold")
    args = p.parse_args(argv)
    index = read_voc_folder(args.voc, "auto")
    rng = np.random.default_rng(0)
    split = index.ids("train")
    cams = {i: cams_like_real(read_label(index.mask_path(i, "train")), index.labels[i], rng) for i in split}
    if args.only == "scale":
        return scales(index, split[:args.images], args.cams, args.threshold)

    settings = PseudoLabelSettings(threshold=THRESHOLD, ignore_band=BAND, crf=PARAMS, num_classes=index.num_classes)
    times = {"present": 0.0, "irn_split": 0.0, "all": 0.0}
    scores = {k: ConfusionMatrix(index.num_classes) for k in times}
    agree, pixels, labels_used = 0, 0, []
    ids = split[:args.images] if args.only != "processes" else []
    for image_id in ids:
        image, gt = load_rgb(index.image_path(image_id)), read_label(index.mask_path(image_id, "train"))
        entry = CamEntry(cams[image_id], np.asarray(index.labels[image_id]))
        start = time.perf_counter()
        few = pseudo_label(image, entry, settings)
        times["present"] += time.perf_counter() - start
        start = time.perf_counter()
        scores["irn_split"].update(gt, irn_split_label(image, entry))
        times["irn_split"] += time.perf_counter() - start
        start = time.perf_counter()
        many = naive_label(image, entry, index.num_classes)
        times["all"] += time.perf_counter() - start
        scores["present"].update(gt, few)
        scores["all"].update(gt, many)
        agree += int(np.sum(few == many))
        pixels += few.size
        labels_used.append(len(index.labels[image_id]) + 1)
    if not ids:
        return processes(index, split, cams, settings)
    n = len(ids)
    heights = [load_rgb(index.image_path(i)).shape[:2] for i in ids]
    print(f"{args.voc.name}: {n} images of {np.mean([h for h, _ in heights]):.0f} x "
          f"{np.mean([w for _, w in heights]):.0f} px on average; pseudo labels with the band "
          f"(CRF at {THRESHOLD - BAND:g} and {THRESHOLD + BAND:g}), {PARAMS.iterations} iterations, one process")
    for key, name in (("present", f"present classes + background ({np.mean(labels_used):.1f} labels), shared "
                                  "lattice"),
                      ("irn_split", "the same with IRN's unary split (among present labels)"),
                      ("all", f"all {index.num_classes} labels, a lattice per CRF")):
        print(f"  {name:62s} {n / times[key]:6.2f} img/s   mIoU {scores[key].ignored_as(0).miou():.4f}")
    print(f"  speed-up {times['all'] / times['present']:.2f}x; mIoU difference "
          f"{scores['present'].ignored_as(0).miou() - scores['all'].ignored_as(0).miou():+.4f}; "
          f"label maps agree on {agree / pixels:.2%} of pixels")
    if args.only != "labels":
        processes(index, split, cams, settings)


def processes(index, split: list[str], cams: dict, settings: PseudoLabelSettings) -> None:
    """1 vs 2 processes through the pseudo-label stage's code, on the whole train split."""
    work = Path(tempfile.mkdtemp(prefix="crf_bench_"))
    try:
        meta = CamFileMeta(index.name, "train", tuple(index.classes), "none", (1.0,), False, "-")
        with CamWriter(work / "cams.h5", meta) as writer:
            for image_id in split:
                writer.write(image_id, cams[image_id], index.labels[image_id])
        rates = {}
        for workers in (1, 2):
            start = time.perf_counter()
            generate_pseudo_labels(index, work / "cams.h5", "train", settings, work / f"labels{workers}", workers)
            rates[workers] = len(split) / (time.perf_counter() - start)
            print(f"pseudo labels with CRF and band, {len(split)} images, {workers} process(es): "
                  f"{rates[workers]:.2f} img/s")
        print(f"  speed-up from 1 to 2 processes: {rates[2] / rates[1]:.2f}x")
    finally:
        shutil.rmtree(work)


def scales(index, ids: list[str], cams_path: Path | None, threshold: float) -> None:
    """The stage's pseudo labels (band and CRF) with the CRF at 1, 1/2 and 1/3 of the image side."""
    reader = CamReader(cams_path) if cams_path else None
    rng = np.random.default_rng(0)
    runs = {scale: [ConfusionMatrix(index.num_classes), 0.0, 0] for scale in (1.0, 1 / 2, 1 / 3)}
    pixels = 0
    for image_id in ids:
        image, gt = load_rgb(index.image_path(image_id)), read_label(index.mask_path(image_id, "train"))
        entry = reader.read(image_id) if reader else CamEntry(
            cams_like_real(gt, index.labels[image_id], rng), np.asarray(index.labels[image_id]))
        full = None
        for scale, run in runs.items():
            settings = PseudoLabelSettings(threshold, BAND, dataclasses.replace(PARAMS, scale=scale),
                                           index.num_classes)
            start = time.perf_counter()
            label = pseudo_label(image, entry, settings)
            run[1] += time.perf_counter() - start
            full = label if full is None else full
            run[0].update(gt, label)
            run[2] += int(np.sum(label == full))
        pixels += gt.size
    print(f"{len(ids)} train images, {'CAMs of ' + str(cams_path) if reader else 'CAMs from the masks'}, "
          f"threshold {threshold:g}, band {BAND:g}, {PARAMS.iterations} iterations, one process")
    base = runs[1.0][1]
    for scale, (scores, seconds, agree) in runs.items():
        print(f"  CRF at scale {scale:.2f}: {seconds / len(ids):.3f} s/img ({seconds / base:.2f}x)   "
              f"mIoU {scores.ignored_as(0).miou():.4f}   agrees with scale 1 on {agree / pixels:.2%} of pixels")


if __name__ == "__main__":
    main()
