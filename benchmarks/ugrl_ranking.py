"""Which pixel score ranks pseudo-label correctness: the measurement behind UGRL's reliable pool.

    python -m benchmarks.ugrl_ranking --index results/dataset/index.checked.json \
        --model results/cam/model.pt --labels results/pseudo_labels/none/train_aug
        [--split train_aug] [--images 200]     # --model: a CAM network or a trained ugrl segmenter

UGRL's pool and pixel weights rest on one claim: a pixel whose feature sits close to its label's
class prototype is more often labelled right. This measures that claim for candidate scores on the
network UGRL starts from (the CAM network, ``seg.init: cam``) and the labels it trains on, against
the masks (reporting only). Prototypes are PUM's: per image and present class, the CAM-weighted
mean feature (background weighted by ``1 - max`` foreground CAM), the mean of their unit vectors
over the images. Candidates:

- features: the last stage (stride 32), the one before (stride 16), both concatenated;
- centring: none, or the mean feature of all images subtracted (post-ReLU features share a large
  positive mean that makes every cosine high);
- score: ``distance`` (cosine to the label's prototype) or ``margin`` (that cosine minus the best
  cosine to another class present in the image);
- prototypes (``--prototypes``): PUM's CAM-weighted class vectors, or the mean feature of each
  class's labelled pixels.

Printed per candidate: AUROC of the score for "label = mask" within each class (mean over classes
with both outcomes), pooled over classes after a per-class rank, the precision of the most and the
least certain 20% of each class, and the precision of a K% pool chosen per image (one ranking of
all classes) and per class (K% of each class). A CAM-score row (the label's normalised CAM, or
``1 - max`` for background) is the baseline without prototypes.
"""
from __future__ import annotations

import argparse
from collections import defaultdict

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from stages.data.images import load_rgb
from stages.data.index import DatasetIndex
from stages.data.tensors import to_tensor
from stages.errors import InputError
from stages.io.label_png import IGNORE, read_label
from stages.methods.registry import load_trained_model
from stages.methods.ugrl.contrast import reliable_pool
from stages.methods.ugrl.diagnostics import auroc
from stages.methods.ugrl.uncertainty import class_scores
from stages.models.cam_net import load_cam_net

LEVELS = {"s32": (-1,), "s16": (-2,), "s16+s32": (-2, -1), "decoder": ("decoder",)}


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--index", required=True)
    p.add_argument("--model", required=True, help="CAM network (results/cam/model.pt)")
    p.add_argument("--labels", required=True, help="pseudo-label folder of the split")
    p.add_argument("--split", default="train_aug")
    p.add_argument("--images", type=int, default=200)
    p.add_argument("--k", type=float, default=35.0, help="pool size, percent of labelled pixels")
    p.add_argument("--prototypes", choices=["cam", "labels"], default="cam",
                   help="class vectors weighted by the CAMs (PUM's) or by the pseudo labels")
    p.add_argument("--levels", nargs="*", choices=list(LEVELS), help="only these feature levels")
    return p.parse_args()


@torch.no_grad()
def image_records(index: DatasetIndex, split: str, model_path: str, labels: str, limit: int) -> list[dict]:
    """Per image: features of every level at its own grid, class scores, label, mask, classes."""
    try:
        net, _ = load_cam_net(model_path)
    except InputError:  # a trained UGRL segmenter: its decoder's features too
        net, _ = load_trained_model(model_path, "cpu")
    records = []
    for image_id in index.ids(split)[:limit]:
        image = to_tensor(load_rgb(index.image_path(image_id)))[None]
        feats = net.backbone(image)
        present = torch.zeros(1, index.num_classes, dtype=torch.bool)
        present[0, [0, *index.labels.get(image_id, [])]] = True
        scores = class_scores(net.classifier(feats[-1]), present)
        levels = {lvl: feats[lvl].float() for lvl in (-2, -1)}
        if hasattr(net, "decoder"):
            levels["decoder"] = net.decoder.features(feats).float()
        records.append({"feats": levels, "scores": scores,
                        "present": present[0], "label": torch.from_numpy(read_label(f"{labels}/{image_id}.png")).long(),
                        "gt": torch.from_numpy(read_label(index.mask_path(image_id, split))).long()})
    return records


def level_features(record: dict, levels: tuple[int, ...]) -> torch.Tensor:
    """(1, D, h, w) features of ``levels`` at the finest of their grids."""
    grid = record["feats"][levels[0]].shape[-2:]
    return torch.cat([F.interpolate(record["feats"][lvl], size=grid, mode="bilinear", align_corners=False)
                      for lvl in levels], dim=1)


def prototypes(records: list[dict], levels: tuple[int, ...], mean: torch.Tensor, num_classes: int,
               source: str) -> torch.Tensor:
    """(C, D) prototypes: the mean over images of each class's unit vector, the CAM-weighted mean
    feature (PUM's, ``source`` cam) or the mean feature of the pixels labelled c (``labels``)."""
    total = torch.zeros(num_classes, mean.numel())
    for r in records:
        f = level_features(r, levels) - mean[None, :, None, None]
        if source == "cam":
            w = F.interpolate(r["scores"], size=f.shape[-2:], mode="bilinear", align_corners=False).flatten(2)[0]
        else:
            small = F.interpolate(r["label"][None, None].float(), size=f.shape[-2:], mode="nearest")[0, 0].long()
            w = F.one_hot(small.clamp(max=num_classes), num_classes + 1)[..., :num_classes].flatten(0, 1).T.float()
        vectors = (w @ f.flatten(2)[0].T) / w.sum(dim=1, keepdim=True).clamp(min=1e-6)
        total += F.normalize(vectors, dim=1) * r["present"][:, None]
    return F.normalize(total, dim=1)


def pixel_table(records: list[dict], levels: tuple[int, ...] | None, centred: bool, num_classes: int,
                source: str) -> pd.DataFrame:
    """One row per labelled pixel with a mask: image, label, right, and each score's certainty."""
    rows = defaultdict(list)
    mean = torch.zeros(1)
    if levels is not None:
        dim = sum(records[0]["feats"][lvl].shape[1] for lvl in levels)
        mean = torch.zeros(dim)
        if centred:
            mean = torch.cat([level_features(r, levels).flatten(2)[0].T for r in records]).mean(dim=0)
        protos = prototypes(records, levels, mean, num_classes, source)
    for i, r in enumerate(records):
        label, gt = r["label"], r["gt"]
        keep = (label != IGNORE) & (gt != IGNORE)
        if levels is None:  # the CAM score of the label's class
            maps = F.interpolate(r["scores"], size=label.shape, mode="bilinear", align_corners=False)[0]
            scores = {"distance": maps, "margin": maps}
        else:
            f = F.normalize(level_features(r, levels) - mean[None, :, None, None], dim=1)
            maps = F.interpolate(torch.einsum("bdhw,cd->bchw", f, protos), size=label.shape, mode="bilinear",
                                 align_corners=False)[0]
            other = maps.masked_fill(~r["present"][:, None, None], -2.0)
            scores = {"distance": maps, "margin": maps}
        y = label.clamp(max=num_classes - 1)
        own = {k: v.gather(0, y[None])[0] for k, v in scores.items()}
        if levels is not None:
            rival = other.scatter(0, y[None], -2.0).amax(dim=0)
            own["margin"] = own["margin"] - rival.clamp(min=-1)
        rows["image"].append(np.full(int(keep.sum()), i))
        rows["label"].append(label[keep].numpy())
        rows["right"].append((label == gt)[keep].numpy())
        for k, v in own.items():
            rows[k].append(v[keep].numpy())
    return pd.DataFrame({k: np.concatenate(v) for k, v in rows.items()})


def summarise(table: pd.DataFrame, score: str, k: float) -> dict[str, float]:
    """AUROC within classes and pooled after per-class ranks, top/bottom 20% precision, pool precision."""
    per_class, top, bottom = [], [], []
    for _, group in table.groupby("label"):
        value = auroc(group[score].to_numpy(), group["right"].to_numpy())
        if np.isfinite(value):
            per_class.append(value)
        q = group[score].rank(pct=True)
        top.append(group["right"][q > 0.8].mean())
        bottom.append(group["right"][q <= 0.2].mean())
    certainty = torch.from_numpy(table[score].to_numpy())
    label = torch.from_numpy(table["label"].to_numpy())
    image = torch.from_numpy(table["image"].to_numpy())
    right = table["right"].to_numpy()
    by_image, by_class = np.zeros(len(table), bool), np.zeros(len(table), bool)
    for i in image.unique():
        sel = (image == i).numpy()
        by_image[sel] = reliable_pool(-certainty[sel][None], label[sel][None], k, per_class=False)[0].numpy()
        by_class[sel] = reliable_pool(-certainty[sel][None], label[sel][None], k, per_class=True)[0].numpy()
    return {"auroc_in_class": float(np.mean(per_class)),
            "auroc_class_ranked": auroc(table.groupby("label")[score].rank(pct=True).to_numpy(), right),
            "precision_top20": float(np.nanmean(top)), "precision_bottom20": float(np.nanmean(bottom)),
            f"pool{k:g}_per_image": float(right[by_image].mean()),
            f"pool{k:g}_per_class": float(right[by_class].mean()), "labelled": float(right.mean())}


def main() -> None:
    args = parse_args()
    torch.set_grad_enabled(False)
    index = DatasetIndex.load(args.index)
    records = image_records(index, args.split, args.model, args.labels, args.images)
    rows = []
    candidates = [("cam score", None, False)] + [(lvl, levels, centred) for lvl, levels in LEVELS.items()
                                                  for centred in (False, True)]
    for name, levels, centred in candidates:
        if levels is not None and (levels[0] not in records[0]["feats"] or (args.levels and name not in args.levels)):
            continue
        table = pixel_table(records, levels, centred, index.num_classes, args.prototypes)
        for score in ("distance",) if levels is None else ("distance", "margin"):
            rows.append({"features": name, "centred": centred if levels else "-", "score": score,
                         **summarise(table, score, args.k)})
    print(f"{len(records)} images of {args.split}, {len(table)} labelled pixels with a mask")
    print(pd.DataFrame(rows).to_string(index=False, float_format=lambda v: f"{v:.3f}"))


if __name__ == "__main__":
    main()
