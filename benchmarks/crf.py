"""Dense CRF cost: present classes + background vs all 21 labels, and 1 vs 2 worker processes.

    python -m benchmarks.crf [--voc ../shared/data/voc-sample] [--images 16]

Inputs are the sample's real images with CAMs made from their masks (see benchmarks/cam_store.py).
The label comparison builds the CRF input as the stage does (``label_probabilities`` of the
thresholded map) once over present classes + background and once over all 21 labels. The process
comparison runs the pseudo-label stage's own code (``generate_pseudo_labels``) on a CAM file of the
whole train split.
"""
from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.cam_store import VOC_SAMPLE, cams_like_real
from stages.cams.threshold import with_background
from stages.data.images import load_rgb
from stages.data.voc_folder import read_voc_folder
from stages.io.cam_store import CamFileMeta, CamWriter
from stages.io.label_png import read_label
from stages.labels.crf import CRFParams, dense_crf
from stages.labels.pseudo import PseudoLabelSettings, generate_pseudo_labels, label_probabilities

PARAMS = CRFParams(iterations=10, gaussian_sxy=3, gaussian_compat=3,
                   bilateral_sxy=80, bilateral_srgb=13, bilateral_compat=10)
THRESHOLD = 0.3


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--voc", type=Path, default=VOC_SAMPLE)
    p.add_argument("--images", type=int, default=16, help="images for the label-count comparison")
    args = p.parse_args(argv)
    index = read_voc_folder(args.voc, "auto")
    rng = np.random.default_rng(0)
    split = index.ids("train")
    cams = {i: cams_like_real(read_label(index.mask_path(i, "train")), index.labels[i], rng) for i in split}

    # present classes + background vs all labels, same probabilities
    times = {"present": 0.0, "all": 0.0}
    agree, pixels, labels_used = 0, 0, []
    for image_id in split[:args.images]:
        image, present = load_rgb(index.image_path(image_id)), index.labels[image_id]
        label_ids = np.array([0] + present)
        channels = with_background(cams[image_id], THRESHOLD).argmax(0)
        start = time.perf_counter()
        few = label_ids[dense_crf(image, label_probabilities(channels, len(label_ids)), PARAMS).argmax(0)]
        times["present"] += time.perf_counter() - start
        start = time.perf_counter()
        full = label_probabilities(label_ids[channels], index.num_classes)
        many = dense_crf(image, full, PARAMS).argmax(0)
        times["all"] += time.perf_counter() - start
        agree += int(np.sum(few == many))
        pixels += few.size
        labels_used.append(len(present) + 1)
    n = min(args.images, len(split))
    print(f"CRF, {n} VOC images ({np.mean([load_rgb(index.image_path(i)).shape[0] for i in split[:n]]):.0f} px "
          f"high on average), {PARAMS.iterations} iterations, one process:")
    print(f"  present classes + background ({np.mean(labels_used):.1f} labels on average): "
          f"{n / times['present']:.2f} img/s")
    print(f"  all {index.num_classes} labels:                                 {n / times['all']:.2f} img/s")
    print(f"  speed-up {times['all'] / times['present']:.1f}x; label maps agree on {agree / pixels:.2%} of pixels")

    # 1 vs 2 processes through the pseudo-label stage's code, on the whole train split
    work = Path(tempfile.mkdtemp(prefix="crf_bench_"))
    try:
        meta = CamFileMeta(index.name, "train", tuple(index.classes), "none", (1.0,), False, "-")
        with CamWriter(work / "cams.h5", meta) as writer:
            for image_id in split:
                writer.write(image_id, cams[image_id], index.labels[image_id])
        settings = PseudoLabelSettings(threshold=THRESHOLD, ignore_band=0.0, crf=PARAMS)
        rates = {}
        for workers in (1, 2):
            start = time.perf_counter()
            generate_pseudo_labels(index, work / "cams.h5", "train", settings, work / f"labels{workers}", workers)
            rates[workers] = len(split) / (time.perf_counter() - start)
            print(f"pseudo labels with CRF (no band), {len(split)} images, {workers} process(es): "
                  f"{rates[workers]:.2f} img/s")
        print(f"  speed-up from 1 to 2 processes: {rates[2] / rates[1]:.2f}x")
    finally:
        shutil.rmtree(work)


if __name__ == "__main__":
    main()
