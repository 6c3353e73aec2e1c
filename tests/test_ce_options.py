"""ce's options for noisy labels: per-class small-loss selection, class balance; off is plain CE."""
import pytest
import torch

from stages.io.label_png import IGNORE
from stages.methods.ce import CrossEntropy, masked_cross_entropy, small_loss_cross_entropy
from stages.methods.registry import get_method


def _batch(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(2, 3, 8, 8, generator=g)
    label = torch.zeros(2, 8, 8, dtype=torch.long)
    label[:, :2] = 1  # a small class: 32 pixels against 64 background
    label[:, 2:4, :4] = 2
    label[0, 7] = IGNORE
    return logits, label


def test_zero_forget_is_plain_ce():
    logits, label = _batch()
    loss, keep = small_loss_cross_entropy(logits, label, 0.0)
    assert torch.allclose(loss, masked_cross_entropy(logits, label))
    assert torch.equal(keep, label != IGNORE)


def test_each_class_drops_its_share_of_highest_losses():
    logits, label = _batch()
    loss, keep = small_loss_cross_entropy(logits, label, 0.25)
    per_pixel = torch.nn.functional.cross_entropy(logits, label, ignore_index=IGNORE, reduction="none")
    for c in (0, 1, 2):
        members = label == c
        assert int((members & ~keep).sum()) == int(0.25 * int(members.sum())), c
        # every dropped pixel of the class had a higher loss than every kept one
        assert per_pixel[members & ~keep].min() >= per_pixel[members & keep].max(), c
    assert not keep[label == IGNORE].any()
    assert torch.allclose(loss, per_pixel[keep].mean())
    assert loss < masked_cross_entropy(logits, label)


def test_forget_ramps_in_then_holds():
    method = CrossEntropy(forget_rate=0.2, forget_ramp=0.5)
    assert [method.forget_at(s, 100) for s in (0, 25, 50, 90)] == pytest.approx([0.0, 0.1, 0.2, 0.2])
    assert CrossEntropy(forget_rate=0.2, forget_ramp=0.0).forget_at(0, 100) == 0.2


def test_bad_forget_rate_is_refused():
    with pytest.raises(ValueError, match="forget_rate"):
        get_method("ce", {"forget_rate": 1.0})


def test_class_balance_reweights_without_scaling():
    logits, label = _batch(1)
    per_pixel = torch.nn.functional.cross_entropy(logits, label, ignore_index=IGNORE, reduction="none")
    loss, keep = small_loss_cross_entropy(logits, label, 0.0, balance=1.0)
    # full inverse frequency: every class weighs the same in total
    per_class = torch.stack([per_pixel[label == c].mean() for c in (0, 1, 2)])
    assert torch.allclose(loss, per_class.mean())
    uniform = torch.zeros_like(logits)
    flat, _ = small_loss_cross_entropy(uniform, label, 0.0, balance=0.5)
    assert torch.allclose(flat, masked_cross_entropy(uniform, label))  # mean weight 1
