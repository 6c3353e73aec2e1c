"""UGRL (stages/methods/ugrl/): its pieces on hand-made inputs with known answers, then the method
through train_seg -- online targets, a SIGKILL and resume that keeps the prototypes, and two-process
DDP -- and its place in the config schema."""
from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import jsonschema
import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
import yaml

from conftest import REPO, TINY_CONFIG, pipeline_env, sigkill_when, stage_argv, train_options
from stages import train_seg
from stages.data.index import DatasetIndex
from stages.data.toy import generate_toy
from stages.errors import InputError
from stages.io.checkpoint import load_checkpoint, save_checkpoint
from stages.io.label_png import IGNORE
from stages.methods.base import TrainInputs
from stages.methods.ce import masked_cross_entropy
from stages.methods.registry import get_method, load_trained_model, missing_inputs
from stages.methods.ugrl import weighted_cross_entropy
from stages.methods.ugrl.contrast import affinity_loss, reliable_pool, sample_pool, supervised_infonce
from stages.methods.ugrl.diagnostics import auroc, decile_precision, mechanism_table, pixel_sample
from stages.methods.ugrl.par import cam_targets, denormalise, normalised_cams, par_refine
from stages.methods.ugrl.uncertainty import PixelPrototypes, PrototypeBank, class_vectors, uncertainty_weights
from stages.models.cam_net import CAMNet
from stages.models.segmenter import SegmenterSpec
from stages.runtime.distributed import DistContext
from stages.runtime.hooks import StepContext

CPU = DistContext(0, 1, 0, torch.device("cpu"))
TIMING_COLUMNS = ["img_per_s"]


# ---- PUM: prototypes and class uncertainty -------------------------------------------------

def identity_bank(num_classes: int, dim: int, eta: float) -> PrototypeBank:
    bank = PrototypeBank(num_classes, dim, dim, eta)
    bank.projection = torch.eye(dim)  # hand-made features are then the prototype space itself
    return bank


def test_prototype_ema_and_uncertainty_on_hand_made_features() -> None:
    bank = identity_bank(num_classes=3, dim=2, eta=0.75)
    # two images; class 1 in both (vectors along x and y), class 2 only in the second, class 0 nowhere
    vectors = torch.tensor([[[9.0, 9.0], [2.0, 0.0], [5.0, 5.0]],
                            [[9.0, 9.0], [0.0, 3.0], [0.0, -1.0]]])
    present = torch.tensor([[False, True, False], [False, True, True]])
    sums = bank.batch_sums(vectors, present, CPU)
    assert torch.allclose(sums, torch.tensor([[0.0, 0.0], [1.0, 1.0], [0.0, -1.0]]))  # unit vectors summed
    assert torch.equal(bank.uncertainty(sums), torch.zeros(3)), "no prototype yet: no evidence, u = 0"
    bank.update(sums)
    assert torch.equal(bank.seen, torch.tensor([False, True, True]))
    root_half = math.sqrt(0.5)
    assert torch.allclose(bank.prototypes, torch.tensor([[0.0, 0.0], [root_half, root_half], [0.0, -1.0]]))

    later = torch.tensor([[0.0, 0.0], [3.0, 0.0], [0.0, -2.0]])  # class 1 now along x only
    u = bank.uncertainty(later)
    assert torch.allclose(u, torch.tensor([0.0, 1 - root_half, 0.0]), atol=1e-6)
    assert torch.allclose(uncertainty_weights(u, 0.5), torch.exp(-u / 0.5))
    bank.update(later)
    expected = 0.75 * torch.tensor([root_half, root_half]) + 0.25 * torch.tensor([1.0, 0.0])
    assert torch.allclose(bank.prototypes[1], expected)
    assert torch.equal(bank.prototypes[0], torch.zeros(2)), "an absent class keeps its prototype"

    restored = identity_bank(3, 2, 0.75)
    restored.load_state_dict(bank.state_dict())
    assert torch.equal(restored.prototypes, bank.prototypes) and torch.equal(restored.seen, bank.seen)


def test_class_vectors_weight_features_by_scores() -> None:
    features = torch.tensor([[[[1.0, 3.0]], [[0.0, 10.0]]]])  # B=1, D=2, 1x2 positions
    scores = torch.tensor([[[[1.0, 0.0]], [[1.0, 1.0]]]])  # class 0 at the left, class 1 everywhere
    vectors = class_vectors(features, scores)
    assert torch.allclose(vectors, torch.tensor([[[1.0, 0.0], [2.0, 5.0]]]))


def test_pixel_certainty_is_the_margin_to_the_best_other_present_class() -> None:
    pixels = PixelPrototypes(num_classes=3, dim=2, eta=0.9)
    pixels.update(torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]]), torch.zeros(2))  # mean stays 0
    features = torch.tensor([[[[1.0, 1.0, 0.0, 1.0]], [[0.0, 1.0, 1.0, 0.0]]]])  # x, diagonal, y, x
    label = torch.tensor([[[0, 0, 1, IGNORE]]])
    present = torch.tensor([[True, True, False]])  # class 2 (opposite to x) is not in the image
    c = pixels.certainty(features, label, present)
    assert torch.allclose(c[..., :3], torch.tensor([[[1.0, 0.0, 1.0]]]), atol=1e-6)  # cos(own) - cos(rival)
    assert c[0, 0, 3] == -math.inf  # unlabelled
    alone = pixels.certainty(features, label, torch.tensor([[True, False, False]]))
    assert torch.isclose(alone[0, 0, 0], torch.tensor(2.0))  # no rival: the margin against cos -1


def test_pixel_prototypes_are_a_bias_corrected_ema_of_centred_features() -> None:
    """The first batch (an untrained decoder) fades like any other: after two batches the
    prototype is their eta-weighted mean, not the first one's seed."""
    pixels = PixelPrototypes(num_classes=1, dim=2, eta=0.5)
    pixels.update(torch.tensor([[1.0, 0.0]]), torch.tensor([2.0, 2.0]))
    assert torch.allclose(pixels.prototypes(), torch.tensor([[1.0, 0.0]])) and torch.allclose(pixels.mean,
                                                                                             torch.tensor([2.0, 2.0]))
    pixels.update(torch.tensor([[0.0, 3.0]]), torch.tensor([4.0, 0.0]))
    # sums 0.25 x + 0.5 y over weights 0.25 + 0.5: the first batch weighs a third, not a half plus
    assert torch.allclose(pixels.prototypes(), F.normalize(torch.tensor([[0.25, 0.5]]), dim=-1))
    assert torch.allclose(pixels.mean, torch.tensor([(0.25 * 2 + 0.5 * 4) / 0.75, (0.25 * 2) / 0.75]))
    # class vectors are taken of centred features: a feature equal to the mean has no direction
    features = pixels.mean[None, :, None, None].expand(1, 2, 2, 2).clone()
    sums, _ = pixels.batch_sums(features, torch.zeros(1, 2, 2, dtype=torch.long), CPU)
    assert torch.equal(sums, torch.zeros(1, 2))


def test_pixel_prototypes_average_each_class_over_its_labelled_pixels() -> None:
    """One unit vector per image and class: the mean centred feature of the pixels labelled c
    (unlabelled pixels and absent classes add nothing); the batch mean feature beside it."""
    pixels = PixelPrototypes(num_classes=3, dim=2, eta=0.9)
    features = torch.tensor([[[[1.0, 3.0, 0.0, 5.0]], [[0.0, 0.0, 2.0, 5.0]]],
                             [[[0.0, 0.0, 0.0, 0.0]], [[1.0, 1.0, 1.0, 1.0]]]])  # (2, 2, 1, 4)
    label = torch.tensor([[[0, 0, 1, IGNORE]], [[1, 1, IGNORE, IGNORE]]])
    sums, mean = pixels.batch_sums(features, label, CPU)
    assert torch.allclose(sums, torch.tensor([[1.0, 0.0], [0.0, 2.0], [0.0, 0.0]]))  # class 1 in both images
    assert torch.allclose(mean, features.mean(dim=(0, 2, 3)))


# ---- ULM: the weighting math -----------------------------------------------------------------

def test_weighted_cross_entropy_math() -> None:
    logits = torch.randn(2, 3, 4, 5)
    label = torch.randint(0, 3, (2, 4, 5))
    label[0, 0] = IGNORE
    ones = torch.ones(label.shape)
    assert torch.allclose(weighted_cross_entropy(logits, label, ones), masked_cross_entropy(logits, label))
    u = torch.tensor([0.0, 0.25, 1.0])
    weight = uncertainty_weights(u, 0.5)[label.clamp(max=2)]
    ce = F.cross_entropy(logits, label, ignore_index=IGNORE, reduction="none")
    by_hand = sum(ce[label == c].sum() * math.exp(-u[c].item() / 0.5) for c in range(3)) / (label != IGNORE).sum()
    assert torch.allclose(weighted_cross_entropy(logits, label, weight), by_hand)
    # an uncertain class teaches less: dividing by the labelled count, not the weights' sum
    assert weighted_cross_entropy(logits, label, weight) < masked_cross_entropy(logits, label)


def test_normalised_weights_move_weight_between_pixels_at_the_same_step_size() -> None:
    """normalise_weights: the batch's labelled pixels weigh 1 on average, however uncertain."""
    method = get_method("ugrl", {"d_cls": 8, "d_seg": 8, "contrastive": False})
    torch.manual_seed(0)
    logits, label = torch.zeros(1, 3, 4, 4), torch.randint(0, 3, (1, 4, 4))
    label[0, 0] = IGNORE
    u = torch.tensor([0.0, 0.5, 1.5])
    picked = {"label": label, "small": label, "pool": label != IGNORE, "certainty": torch.zeros(1, 4, 4)}
    out = {"seg_logits": logits, "features": torch.zeros(1, 4, 2, 2), "affinity": torch.full((1, 4, 4), 0.5)}
    terms, _, _ = method.segmentation_losses(out, picked, torch.full_like(label, IGNORE), u)
    # uniform logits: every pixel's CE is log 3, so a mean weight of 1 gives exactly log 3
    assert torch.isclose(terms["seg"], torch.tensor(math.log(3)))
    raw = get_method("ugrl", {"d_cls": 8, "d_seg": 8, "contrastive": False, "normalise_weights": False})
    terms, _, _ = raw.segmentation_losses(out, picked, torch.full_like(label, IGNORE), u)
    assert terms["seg"] < math.log(3) - 0.1


def test_classification_weights_per_class() -> None:
    logits, targets = torch.randn(4, 3), torch.tensor([[1.0, 0, 1], [0, 1, 0], [1, 1, 0], [0, 0, 1]])
    u = torch.tensor([0.0, 0.5, 2.0])
    w = uncertainty_weights(u, 1.0)
    per_class = F.binary_cross_entropy_with_logits(logits, targets, reduction="none").mean(0)
    weighted = F.multilabel_soft_margin_loss(logits, targets, weight=w)
    assert torch.allclose(weighted, (per_class * w).mean())


# ---- RSE: the reliable pool, InfoNCE, affinity loss --------------------------------------------

def test_reliable_pool_takes_k_percent_of_labelled_pixels_per_image() -> None:
    label = torch.tensor([[[0, 1, 1, 0, IGNORE, IGNORE]],
                          [[2, 2, IGNORE, 0, 1, IGNORE]]])
    uncertainty = torch.tensor([[[0.9, 0.1, 0.5, 0.3, 0.0, 0.0]],
                                [[0.2, 0.8, 0.0, 0.4, 0.1, 0.0]]])
    pool = reliable_pool(uncertainty, label, 50, per_class=False)
    # image 0: 4 labelled -> 2 (0.1, 0.3); image 1: 4 labelled -> 2 (0.1, 0.2); IGNORE never, even at 0.0
    assert pool.tolist() == [[[False, True, False, True, False, False]],
                             [[True, False, False, False, True, False]]]
    assert reliable_pool(uncertainty, label, 35, per_class=False).sum(dim=(1, 2)).tolist() == [2, 2]  # ceil(1.4)
    for per_class in (False, True):
        assert reliable_pool(uncertainty, label, 100, per_class).tolist() == (label != IGNORE).tolist()
    # per class: ceil(50%) of each class of each image; image 1's classes 0 and 1 have one pixel each
    assert reliable_pool(uncertainty, label, 50).tolist() == [[[False, True, False, True, False, False]],
                                                              [[True, False, False, True, True, False]]]
    torch.manual_seed(0)
    drawn = reliable_pool(torch.rand(label.shape), label, 50, per_class=False)
    assert drawn.sum(dim=(1, 2)).tolist() == [2, 2] and not (drawn & (label == IGNORE)).any()
    chosen = sample_pool(drawn, 3)
    assert len(chosen) == 3 and drawn.flatten()[chosen].all() and len(set(chosen.tolist())) == 3
    assert sorted(sample_pool(drawn, 10).tolist()) == drawn.flatten().nonzero()[:, 0].tolist()


def test_supervised_infonce_known_answer() -> None:
    x, y = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    z = torch.stack([x, x, y, y])
    labels = torch.tensor([0, 0, 1, 1])
    tau = 0.5
    # every anchor: one positive at similarity 1, two negatives at 0, among three others
    expected = math.log(1 + 2 * math.exp(-1 / tau))
    assert supervised_infonce(z, labels, tau).item() == pytest.approx(expected, rel=1e-6)
    # an anchor with no positive only adds itself to the others' denominators
    z5, labels5 = torch.cat([z, ((x + y) / math.sqrt(2))[None]]), torch.tensor([0, 0, 1, 1, 2])
    expected5 = -(1 / tau - math.log(math.exp(1 / tau) + 2 + math.exp(math.sqrt(0.5) / tau)))
    assert supervised_infonce(z5, labels5, tau).item() == pytest.approx(expected5, rel=1e-6)
    lonely = torch.randn(3, 2, requires_grad=True)
    loss = supervised_infonce(F.normalize(lonely, dim=1), torch.tensor([0, 1, 2]), tau)
    loss.backward()
    assert loss.item() == 0 and torch.isfinite(lonely.grad).all()


def test_affinity_loss_only_on_included_labelled_pairs() -> None:
    label = torch.tensor([[0, 0, 1, IGNORE]])
    perfect = torch.tensor([[[1.0, 1, 0, 0.3], [1, 1, 0, 0.3], [0, 0, 1, 0.3], [0.3, 0.3, 0.3, 1]]])
    everywhere = torch.ones(1, 4, dtype=torch.bool)
    assert affinity_loss(perfect, label, everywhere).item() == pytest.approx(0, abs=1e-5)
    wrong = perfect.clone()
    wrong[0, 0, 2] = wrong[0, 2, 0] = 0.9  # a different-label pair called alike
    assert affinity_loss(wrong, label, everywhere) > 0.1
    only_class_0 = torch.tensor([[True, True, False, True]])  # the wrong pair is outside the pool
    assert affinity_loss(wrong, label, only_class_0).item() == pytest.approx(0, abs=1e-5)


@pytest.mark.parametrize("backbone", ["resnet10t", "mit_b0_s16"])
def test_network_branches_and_symmetric_affinity(backbone: str) -> None:
    """Feature-similarity affinity on a CNN, attention affinity (AFA's) on MiT; the pixel head
    runs on the picked pixels only; the plain forward is what evaluation reads."""
    net = get_method("ugrl", {"d_seg": 16}).build_model(SegmenterSpec(backbone, "mlp", 4), None)
    picked = torch.tensor([0, 5, 17])
    out = net(torch.randn(2, 3, 64, 64), train=True, pick=lambda outputs, grid: picked)
    h, w = out["cams"].shape[-2:]
    assert out["affinity"].shape == (2, h * w, h * w)
    assert torch.allclose(out["affinity"], out["affinity"].transpose(1, 2), atol=1e-6)
    assert out["embeddings"].shape == (3, 16) and torch.allclose(out["embeddings"].norm(dim=1), torch.ones(3))
    assert out["seg_logits"].shape == (2, 4, 64, 64) and out["class_logits"].shape == (2, 3)
    net.eval()
    assert torch.equal(net(torch.ones(1, 3, 64, 64)), net(torch.ones(1, 3, 64, 64), train=True)["seg_logits"])


@pytest.mark.parametrize("cam_head", ["cam", "random", "zero"])
def test_init_from_cam_copies_the_cam_head_only_when_asked(tmp_path: Path, cam_head: str) -> None:
    cam = CAMNet("resnet10t", num_classes=3)
    meta = {"backbone": "resnet10t", "weights": "none", "pooling": "gap", "num_classes": 3,
            "classes": ["background", "a", "b", "c"], "dataset": "test"}
    save_checkpoint(tmp_path / "cam.pt", {"model": cam.state_dict(), "meta": meta})
    method = get_method("ugrl", {"d_seg": 8, "cam_head": cam_head})
    spec = SegmenterSpec("resnet10t", "mlp", 4)
    net = method.build_model(spec, None)
    before = net.classifier.weight.detach().clone()
    method.init_from_cam(net, spec, str(tmp_path / "cam.pt"))
    got, want = net.backbone.state_dict(), cam.backbone.state_dict()
    assert all(torch.equal(got[k], want[k]) for k in want), "the backbone comes either way"
    want = cam.classifier.weight if cam_head == "cam" else before
    assert torch.equal(net.classifier.weight, want)
    assert (cam_head == "zero") == (not net.classifier.weight.any()), "only zero starts every logit at 0"


# ---- PAR and online targets ------------------------------------------------------------------

def two_colour_image(size: int = 32, edge: int = 16) -> torch.Tensor:
    image = torch.zeros(1, 3, size, size)
    image[0, 0, :, :edge] = 1.0  # red left
    image[0, 2, :, edge:] = 1.0  # blue right
    return image


def test_par_moves_labels_towards_colour_edges() -> None:
    image, size, edge = two_colour_image(), 32, 16
    # coarse scores whose boundary lies 6 px right of the colour edge, blurred like an upsampled CAM
    scores = torch.zeros(1, 2, size, size)
    scores[0, 0, :, :edge + 6] = 1.0
    scores[0, 1, :, edge + 6:] = 1.0
    scores = F.interpolate(F.avg_pool2d(scores, 8), size=(size, size), mode="bilinear", align_corners=False)
    truth = (torch.arange(size) >= edge).long().expand(size, size)
    before = (scores.argmax(1)[0] != truth).float().mean()
    after = (par_refine(image, scores).argmax(1)[0] != truth).float().mean()
    assert before > 0.1 and after < before / 3, (before, after)
    flat = (par_refine(torch.zeros_like(image), scores).argmax(1)[0] != truth).float().mean()
    assert flat >= before, "without colour edges PAR has nothing to move the labels towards"


def test_online_targets_threshold_and_follow_colours() -> None:
    image = (two_colour_image() - 0.45) / 0.225  # network input: normalised
    cams = torch.zeros(1, 1, 4, 4)
    cams[0, 0, :, :2] = 5.0  # one class, strong on the red left (stride 8), blurred over the edge
    labels = cam_targets(image, cams, torch.ones(1, 1))
    assert labels.shape == (1, 32, 32)
    assert set(labels.unique().tolist()) <= {0, 1, IGNORE}
    assert (labels[0, :, :12] == 1).float().mean() > 0.9, "strong CAM: foreground"
    assert (labels[0, :, 22:] == 0).float().mean() > 0.9, "no CAM: background"
    absent = cam_targets(image, cams, torch.zeros(1, 1))
    assert (absent == 0).all(), "a class the image lacks is never a target"


def test_online_targets_equal_afas_two_refinements_with_background_planes() -> None:
    """One refinement compared with both thresholds = AFA's two refinements of [threshold, scores]."""
    torch.manual_seed(0)
    image = torch.randn(2, 3, 32, 32)
    cams = torch.randn(2, 3, 4, 4) * 3
    present = torch.tensor([[1.0, 0.0, 1.0], [0.0, 0.0, 1.0]])
    small = F.interpolate(denormalise(image), scale_factor=0.5, mode="bilinear", align_corners=False)
    scores = normalised_cams(cams, present)
    high, low = (par_refine(small, torch.cat([torch.full_like(scores[:, :1], t), scores], 1)).argmax(1)
                 for t in (0.55, 0.35))
    afa = torch.where(high > 0, high, torch.where(low == 0, 0, IGNORE))
    afa = F.interpolate(afa[:, None].float(), size=(32, 32), mode="nearest")[:, 0].long()
    ours = cam_targets(image, cams, present)
    assert torch.equal(ours, afa) and set(ours.unique().tolist()) >= {0, IGNORE}


# ---- the method through train_seg ------------------------------------------------------------

@pytest.fixture(scope="module")
def toy(tmp_path_factory) -> tuple[Path, Path]:
    """(index.json, pseudo labels): GT copies with the right half of every 4th image marked wrong
    (class 1), so the pool-precision report has something to find."""
    from stages.io.label_png import read_label, write_label

    root = tmp_path_factory.mktemp("ugrl")
    index = generate_toy(root / "data", num_classes=3, num_train_aug=12, num_train=6, num_val=4,
                         min_size=48, max_size=64, seed=0)
    index.save(root / "index.json")
    labels = root / "pseudo"
    for n, image_id in enumerate(index.ids("train_aug")):
        label = read_label(index.mask_path(image_id, "train_aug"))
        if n % 4 == 0:
            label[:, label.shape[1] // 2:] = 1
        write_label(labels / f"{image_id}.png", label)
    return root / "index.json", labels


def cli_args(index: Path, labels: Path | None, out: Path, options: dict, **overrides) -> list[str]:
    opts = {"index": index, "split": "train_aug", "method": "ugrl", "method_options": json.dumps(options),
            "pseudo_labels": labels, "backbone": "resnet10t", "weights": "none", "decoder": "mlp",
            "out": out / "model.pt", "checkpoint": out / "ckpt.pt", "metrics": out / "metrics.csv",
            "outputs": out / "outputs",
            **train_options(crop_size=48, scale_range=[0.8, 1.2], color_jitter=0.2, batch_size=4, steps=4,
                            checkpoint_every=2), **overrides}
    return stage_argv(opts)


def test_online_mode_trains_from_its_own_cams_and_reports(toy, tmp_path: Path) -> None:
    index, _ = toy
    train_seg.main(cli_args(index, None, tmp_path, {"targets": "online", "warmup_steps": 2, "d_cls": 64,
                                                    "d_seg": 32}))
    metrics = pd.read_csv(tmp_path / "metrics.csv")
    assert (metrics["seg"][:2] == 0).all() and (metrics["seg"][2:] > 0).all(), "warm-up: classification only"
    assert (metrics["cls"] > 0).all() and (metrics["contrast"][2:] > 0).all()
    model, meta = load_trained_model(tmp_path / "model.pt", "cpu")
    assert meta["method"] == "ugrl" and meta["method_options"]["targets"] == "online"
    classes = DatasetIndex.load(index).classes
    with torch.no_grad():
        assert model(torch.randn(1, 3, 37, 45)).shape == (1, len(classes), 37, 45)
    outputs = tmp_path / "outputs"
    assert {p.name for p in outputs.iterdir()} >= {"class_uncertainty.csv", "class_uncertainty.png",
                                                  "pool_precision.csv", "pool_precision.png", "mechanism.csv",
                                                  "mechanism.png", "prototype_cosine.csv"}
    mechanism = pd.read_csv(outputs / "mechanism.csv")
    assert mechanism["class"].iloc[0] == "all" and mechanism["pixels"].iloc[0] > 0
    assert mechanism.loc[0, "pool_share"] < 1  # steps 3-4: the pool is K% of the labelled pixels
    u = pd.read_csv(outputs / "class_uncertainty.csv")
    assert list(u.columns) == ["step", *classes] and len(u) == 4
    precision = pd.read_csv(outputs / "pool_precision.csv", index_col="step")
    assert precision.loc["total", "labelled_known"] > 0  # the train split's GT was read for the report


def test_ground_truth_never_reaches_the_losses(toy) -> None:
    method = get_method("ugrl", {"d_cls": 32, "d_seg": 16})
    net = method.build_model(SegmenterSpec("resnet10t", "mlp", 3), None)
    ctx = StepContext(step=0, total_steps=1, dist=CPU, optimizers=[])
    torch.manual_seed(0)
    batch = {"image": torch.randn(2, 3, 48, 48), "label": torch.randint(0, 3, (2, 48, 48)),
             "labels": torch.tensor([[1.0, 1.0], [1.0, 0.0]]), "gt": torch.randint(0, 3, (2, 48, 48))}
    torch.manual_seed(1)
    first = method.training_step(net, batch, ctx)
    torch.manual_seed(1)  # the same random draws (the pool's order of classes without a prototype yet)
    other = method.training_step(net, {**batch, "gt": torch.full((2, 48, 48), 2)}, ctx)
    for key in ("loss", "cls", "seg", "contrast", "aux"):
        assert torch.equal(first[key], other[key]), key
    assert not torch.equal(method.pending[0][2], method.pending[1][2]), "the report's counts do read it"
    assert not torch.equal(method.pending[0][3], method.pending[1][3]), "and so does its pixel sample"


def test_l0_weighs_the_classification_loss_in_the_sum() -> None:
    """l0 scales L_cls alone; the other terms keep their weights (the L_cls decomposition rows)."""
    method = get_method("ugrl", {"d_cls": 32, "d_seg": 16, "l0": 0.25, "l2": 0.5, "l3": 2.0})
    net = method.build_model(SegmenterSpec("resnet10t", "mlp", 3), None)
    torch.manual_seed(0)
    batch = {"image": torch.randn(2, 3, 48, 48), "label": torch.randint(0, 3, (2, 48, 48)),
             "labels": torch.tensor([[1.0, 1.0], [1.0, 0.0]]), "gt": torch.randint(0, 3, (2, 48, 48))}
    out = method.training_step(net, batch, StepContext(step=0, total_steps=1, dist=CPU, optimizers=[]))
    assert out["cls"] > 0 and out["seg"] > 0 and out["aux"] > 0
    expected = 0.25 * out["cls"] + out["seg"] + 0.5 * out["contrast"] + 2.0 * out["aux"]
    assert out["loss"].item() == pytest.approx(expected.item(), rel=1e-6)


def test_resume_after_sigkill_keeps_the_prototypes(toy, tmp_path: Path) -> None:
    index, labels = toy
    options = {"warmup_steps": 2, "d_cls": 64, "d_seg": 32}
    steps = {"steps": 6, "checkpoint_every": 2}
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    train_seg.main(cli_args(index, labels, whole, options, **steps))
    command = [sys.executable, "-m", "stages.train_seg", *cli_args(index, labels, killed, options, **steps)]
    killed.mkdir()
    sigkill_when(command, killed / "ckpt.pt", killed / "first.log", timeout=300)
    saved = load_checkpoint(killed / "ckpt.pt")
    assert 0 < saved["step"] < steps["steps"] and saved["hooks"]["bank"]["seen"].any()

    done = subprocess.run(command, env=pipeline_env(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "resuming from" in done.stderr
    a, b = load_checkpoint(whole / "ckpt.pt"), load_checkpoint(killed / "ckpt.pt")
    assert torch.equal(a["hooks"]["bank"]["prototypes"], b["hooks"]["bank"]["prototypes"])
    assert json.dumps(a["hooks"]["history"]) == json.dumps(b["hooks"]["history"])  # NaN: absent classes
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    pd.testing.assert_frame_equal(pd.read_csv(whole / "metrics.csv").drop(columns=TIMING_COLUMNS),
                                  pd.read_csv(killed / "metrics.csv").drop(columns=TIMING_COLUMNS))
    for name in ("pool_precision.csv", "mechanism.csv", "prototype_cosine.csv"):
        pd.testing.assert_frame_equal(pd.read_csv(whole / "outputs" / name), pd.read_csv(killed / "outputs" / name))
    assert torch.equal(a["hooks"]["samples"], b["hooks"]["samples"])
    assert torch.equal(a["hooks"]["pixels"]["sums"], b["hooks"]["pixels"]["sums"])


def test_torchrun_two_processes_with_warm_up(toy, tmp_path: Path) -> None:
    """Idle heads during the warm-up (find_unused_parameters) and all-reduced prototypes under gloo."""
    index, labels = toy
    torchrun = Path(sys.executable).parent / "torchrun"
    command = [str(torchrun), "--standalone", "--nproc_per_node=2", "-m", "stages.train_seg",
               *cli_args(index, labels, tmp_path, {"warmup_steps": 1, "d_cls": 32, "d_seg": 16},
                         steps=2, batch_size=2)]
    done = subprocess.run(command, env={**pipeline_env(), "OMP_NUM_THREADS": "1"}, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    state = load_checkpoint(tmp_path / "ckpt.pt")
    assert state["meta"]["train"]["world_size"] == 2 and len(state["hooks"]["history"]) == 2


# ---- options, needs and the schema -------------------------------------------------------------

def test_needs_follow_the_targets(toy) -> None:
    index, _ = toy
    inputs = TrainInputs(DatasetIndex.load(index), "train_aug")
    assert missing_inputs(get_method("ugrl"), inputs) == ["--pseudo-labels DIR"]
    assert missing_inputs(get_method("ugrl", {"targets": "online"}), inputs) == []
    with pytest.raises(ValueError, match="targets must be one of cached, online"):
        get_method("ugrl", {"targets": "offline"})
    with pytest.raises(ValueError, match="k_percent"):
        get_method("ugrl", {"k_percent": 0})


def schema_errors(variant: dict) -> list[str]:
    config = yaml.safe_load(TINY_CONFIG.read_text())
    config["variants"] = {"mine": variant}
    schema = yaml.safe_load((REPO / "workflow" / "schemas" / "config.schema.yaml").read_text())
    return [e.message for e in jsonschema.Draft202012Validator(schema).iter_errors(config)]


def test_schema_requires_pseudo_labels_only_for_cached_targets() -> None:
    assert schema_errors({"method": "ugrl", "pseudo_labels": "none"}) == []
    assert schema_errors({"method": "ugrl", "targets": "online"}) == []
    assert "'pseudo_labels' is a required property" in schema_errors({"method": "ugrl"})
    assert "'pseudo_labels' is a required property" in schema_errors({"method": "ugrl", "targets": "cached"})
    assert any("k" in e for e in schema_errors({"method": "ugrl", "targets": "online", "k": 5}))


def test_tiny_config_has_a_cheap_ugrl_variant() -> None:
    variant = yaml.safe_load(TINY_CONFIG.read_text())["variants"]["ugrl"]
    assert variant["method"] == "ugrl" and variant["pseudo_labels"] in ("plmix", "none")
    assert variant.get("warmup_steps", 0) >= 1


# ---- diagnostics: does the certainty rank label correctness? ----------------------------------

def test_auroc_and_decile_precision_on_hand_made_scores() -> None:
    right = np.array([False, False, True, True])
    assert auroc(np.array([0.1, 0.2, 0.3, 0.4]), right) == 1.0
    assert auroc(np.array([0.4, 0.3, 0.2, 0.1]), right) == 0.0
    assert auroc(np.array([0.5, 0.5, 0.5, 0.5]), right) == 0.5  # ties count half
    assert auroc(np.array([0.1, 0.3, 0.2, 0.4]), right) == 0.75  # 3 of 4 pairs ordered
    assert math.isnan(auroc(np.ones(3), np.ones(3, bool)))
    certainty = np.arange(20.0)
    assert decile_precision(certainty, certainty >= 10) == [0.0] * 5 + [1.0] * 5


def test_mechanism_table_ranks_within_each_class() -> None:
    """Two classes whose certainties do not overlap: within each, the certain half is right and the
    uncertain half wrong. Per class the ranking is perfect (AUROC 1) whatever the classes' levels."""
    n = 100
    frame = pd.DataFrame({"label": [0] * n + [1] * n,
                          "certainty": np.r_[np.linspace(0.5, 1, n), np.linspace(-1, -0.5, n)],
                          "right": np.r_[np.arange(n) >= n // 2, np.arange(n) >= n // 2]})
    frame["pool"] = np.r_[np.arange(n) >= 80, np.arange(n) >= 80]  # each class's most certain 20%
    table = mechanism_table(frame, ["background", "cat"]).set_index("class")
    assert list(table.index) == ["all", "background", "cat"]
    assert (table["auroc"] == 1.0).all()  # "all" ranks within classes too: the levels do not count
    assert (table["precision_top20"] == 1).all() and (table["precision_bottom20"] == 0).all()
    assert table.loc["cat", "pool_share"] == 0.5 and table.loc["all", "pool_share"] == 0.2
    assert table.loc["cat", "pool_precision"] == 1.0 and table.loc["cat", "outside_precision"] == 30 / 80
    assert table.loc["all", "precision_d1"] == 0 and table.loc["all", "precision_d10"] == 1


def test_pixel_sample_takes_every_kept_pixel_or_an_even_stride() -> None:
    label = torch.arange(10).view(1, 2, 5)
    keep = label % 2 == 0
    rows = pixel_sample(label, label.float() / 10, keep, keep, keep)
    assert rows[:, 0].tolist() == [0, 2, 4, 6, 8] and rows.dtype == torch.float16
    assert pixel_sample(label, label.float(), keep, keep, keep, limit=3)[:, 0].tolist() == [0, 4, 8]


def test_oracle_pool_takes_right_labels_first_and_needs_masks() -> None:
    """ORACLE: the pool holds labels that agree with ground truth before any wrong one."""
    method = get_method("ugrl", {"d_cls": 16, "d_seg": 8, "pool": "oracle", "k_percent": 50, "contrastive": False})
    assert "gt_masks" in method.needs
    net = method.build_model(SegmenterSpec("resnet10t", "mlp", 3), None)
    torch.manual_seed(0)
    label = torch.randint(0, 3, (2, 48, 48))
    gt = torch.where(torch.rand(2, 48, 48) < 0.6, label, (label + 1) % 3)  # 60% right
    batch = {"image": torch.randn(2, 3, 48, 48), "label": label, "labels": torch.ones(2, 2), "gt": gt}
    method.training_step(net, batch, StepContext(step=0, total_steps=1, dist=CPU, optimizers=[]))
    counts = method.pending[-1][2]  # pool right, pool known, labelled right, labelled known
    assert counts[0] / counts[1] == 1.0 and counts[2] / counts[3] < 0.7
    with pytest.raises(InputError, match="pool must be one of"):
        get_method("ugrl", {"pool": "best"})
