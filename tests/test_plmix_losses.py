"""PL-Mix loss terms on tiny tensors against hand-computed values, and the training step."""
from __future__ import annotations

import math

import pytest
import torch

from stages.models.cam_net import CAMNet
from stages.plmix.losses import class_logits, continuity_loss, focal_loss, soft_iou_and_dice_losses
from stages.plmix.training import CamsAndLogits, MixLoss, MixStep, pooled_logits

# two classes at two pixels (1x2 image): probabilities per class, target = [background, class 1]
PROBS = torch.tensor([[[[0.8, 0.3]], [[0.2, 0.7]]]])
TARGET = torch.tensor([[[0, 1]]])


def with_ignored_pixel(probs: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A third pixel, labelled 255, with probabilities that would change every sum if counted."""
    extra = torch.tensor([0.05, 0.95]).view(1, 2, 1, 1)
    return torch.cat([probs, extra], dim=3), torch.cat([target, torch.tensor([[[255]]])], dim=2)


def soft_iou_loss(probs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return soft_iou_and_dice_losses(probs, target)[0]


def soft_dice_loss(probs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return soft_iou_and_dice_losses(probs, target)[1]


def test_soft_iou_by_hand() -> None:
    # class 0: I = 0.8, U = (0.8 + 1 - 0.8) + 0.3 = 1.3; class 1: I = 0.7, U = 0.2 + 1 = 1.2
    expected = ((1 - 0.8 / 1.3) + (1 - 0.7 / 1.2)) / 2
    assert soft_iou_loss(PROBS, TARGET).item() == pytest.approx(expected, rel=1e-6)
    assert soft_iou_loss(*with_ignored_pixel(PROBS, TARGET)).item() == pytest.approx(expected, rel=1e-6)


def test_soft_dice_by_hand() -> None:
    # class 0: 2 * 0.8 / (1.1 + 1); class 1: 2 * 0.7 / (0.9 + 1)
    expected = ((1 - 1.6 / 2.1) + (1 - 1.4 / 1.9)) / 2
    assert soft_dice_loss(PROBS, TARGET).item() == pytest.approx(expected, rel=1e-6)
    assert soft_dice_loss(*with_ignored_pixel(PROBS, TARGET)).item() == pytest.approx(expected, rel=1e-6)


def test_overlap_losses_score_only_classes_in_the_target() -> None:
    probs = torch.tensor([[[[0.7, 0.2]], [[0.2, 0.6]], [[0.1, 0.2]]]])  # class 2 has no target pixel
    expected = ((1 - 0.7 / 1.2) + (1 - 0.6 / 1.2)) / 2
    assert soft_iou_loss(probs, TARGET).item() == pytest.approx(expected, rel=1e-6)
    perfect = torch.tensor([[[[1.0, 0.0]], [[0.0, 1.0]]]])
    assert soft_iou_loss(perfect, TARGET).item() == pytest.approx(0.0, abs=1e-6)
    assert soft_dice_loss(perfect, TARGET).item() == pytest.approx(0.0, abs=1e-6)


def test_focal_by_hand() -> None:
    logits = PROBS.log()  # log_softmax of log-probabilities that sum to 1 gives them back
    expected = (-(0.2 ** 2) * math.log(0.8) - (0.3 ** 2) * math.log(0.7)) / 2
    assert focal_loss(logits, TARGET, gamma=2.0).item() == pytest.approx(expected, rel=1e-5)
    cross_entropy = (-math.log(0.8) - math.log(0.7)) / 2
    assert focal_loss(logits, TARGET, gamma=0.0).item() == pytest.approx(cross_entropy, rel=1e-5)
    probs, target = with_ignored_pixel(PROBS, TARGET)
    assert focal_loss(probs.log(), target, gamma=2.0).item() == pytest.approx(expected, rel=1e-5)


def test_continuity_by_hand() -> None:
    # one horizontal pair: |0.8 - 0.3| + |0.2 - 0.7| = 1.0
    assert continuity_loss(PROBS).item() == pytest.approx(1.0)
    # 2x2 map of one-hot vectors, left column class 0, right column class 1:
    # two horizontal pairs differ by 2, two vertical pairs by 0 -> mean 1.0
    probs = torch.tensor([[[[1.0, 0.0], [1.0, 0.0]], [[0.0, 1.0], [0.0, 1.0]]]])
    assert continuity_loss(probs).item() == pytest.approx(1.0)
    assert continuity_loss(torch.full((1, 3, 4, 4), 1 / 3)).item() == 0.0


def test_class_logits_by_hand() -> None:
    cams = torch.tensor([[[[2.0, 1.0, -1.0]], [[-1.0, -2.0, -3.0]]]])  # (1, 2 foreground, 1, 3)
    present = torch.tensor([[True, True, False]])
    probs = class_logits(cams, present, background=0.3, temperature=0.1).softmax(dim=1)
    # class 1 divided by its largest magnitude 2: [1, 0.5, -0.5]; against 0.3, over temperature 0.1
    for x, score in enumerate([1.0, 0.5, -0.5]):
        expected = 1 / (1 + math.exp((0.3 - score) / 0.1))
        assert probs[0, 1, 0, x].item() == pytest.approx(expected, rel=1e-4)
    assert (probs[0, 2] == 0).all()  # absent class: probability exactly 0
    assert torch.allclose(probs.sum(dim=1), torch.ones(1, 1, 3))
    # a map that is nowhere positive stays in [-1, 0]: [-0.25, -1] against 0.3
    logits = class_logits(torch.tensor([[[[-1.0, -4.0]]]]), torch.tensor([[True, True]]), 0.3, 0.1)
    assert logits[0, 1, 0].tolist() == pytest.approx([-2.5, -10.0], rel=1e-4)


@pytest.mark.parametrize("pooling", ["gap", "gmp"])
def test_pooled_logits_match_the_network(pooling: str) -> None:
    torch.manual_seed(0)
    net = CAMNet("resnet18", 3, weights="none", pooling=pooling).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        maps, logits = CamsAndLogits(net)(x)
        assert torch.allclose(logits, net(x), atol=1e-6)
        assert torch.allclose(pooled_logits(net, maps), net(x), atol=1e-6)


def test_mix_step_gives_every_term_and_gradients() -> None:
    torch.manual_seed(0)
    net = CAMNet("resnet18", 3, weights="none")
    target = torch.zeros(2, 64, 64, dtype=torch.long)
    target[0, 10:40, 10:40] = 2
    target[1, :, 30:] = 1
    target[1, 0:4] = 255
    batch = {"image": torch.randn(2, 3, 64, 64), "label": target,
             "labels": torch.tensor([[0.0, 1.0, 0.0], [1.0, 0.0, 1.0]])}
    step = MixStep(MixLoss(focal_weight=1.0, iou_weight=0.5, dice_weight=0.5, continuity_weight=0.1,
                           focal_gamma=2.0, temperature=0.1), background=0.3)
    terms = step.training_step(CamsAndLogits(net), batch, None)  # the step reads nothing of its context
    assert set(terms) == {"loss", "classification", "focal", "soft_iou", "soft_dice", "continuity"}
    assert all(torch.isfinite(v) for v in terms.values())
    weighted = (terms["classification"] + terms["focal"] + 0.5 * terms["soft_iou"] + 0.5 * terms["soft_dice"]
                + 0.1 * terms["continuity"])
    assert terms["loss"].item() == pytest.approx(weighted.item(), rel=1e-6)
    terms["loss"].backward()
    assert net.classifier.weight.grad.abs().sum() > 0
    assert next(net.backbone.parameters()).grad.abs().sum() > 0


def test_overlap_losses_match_the_one_hot_sums_and_their_gradients() -> None:
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 5, 9, 11, generator=g, dtype=torch.float64, requires_grad=True)
    target = torch.randint(0, 4, (3, 9, 11), generator=g)  # class 4 never in the target
    target[:, 4] = 255
    probs = logits.softmax(dim=1)
    valid = (target != 255).unsqueeze(1)
    y = torch.nn.functional.one_hot(target.masked_fill(~valid[:, 0], 0), 5).permute(0, 3, 1, 2) * valid
    p = probs * valid
    inter, p_sum, y_sum = (p * y).sum((2, 3)), p.sum((2, 3)), y.sum((2, 3))
    scored = y_sum > 0
    expected = ((1 - inter / (p_sum + y_sum - inter))[scored].mean(), (1 - 2 * inter / (p_sum + y_sum))[scored].mean())
    got = soft_iou_and_dice_losses(probs, target)
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b)
        torch.testing.assert_close(torch.autograd.grad(a, logits, retain_graph=True)[0],
                                   torch.autograd.grad(b, logits, retain_graph=True)[0])
