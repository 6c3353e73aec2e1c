"""Segmenter architectures, initialisation from the CAM network, and the method registry."""
from __future__ import annotations

import pytest
import torch

from stages.io.checkpoint import save_checkpoint
from stages.methods.base import NEEDS
from stages.methods.ce import masked_cross_entropy
from stages.methods.registry import METHODS, get_method
from stages.models.cam_net import CAMNet
from stages.models.segmenter import Segmenter, SegmenterSpec, init_backbone_from_cam


@pytest.mark.parametrize("backbone", ["resnet18", "efficientnet_lite0"])
@pytest.mark.parametrize("decoder", ["aspp", "mlp"])
def test_logits_at_input_size(backbone: str, decoder: str) -> None:
    model = Segmenter(SegmenterSpec(backbone, decoder, num_classes=5)).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, 72, 100))  # non-square, not a multiple of 32
    assert out.shape == (1, 5, 72, 100)


@pytest.mark.parametrize("decoder", ["aspp", "mlp", "sfpnext"])
def test_decoder_width_sets_the_features_and_the_cost(decoder: str) -> None:
    wide = Segmenter(SegmenterSpec("resnet18", decoder, num_classes=5)).eval()
    narrow = Segmenter(SegmenterSpec("resnet18", decoder, num_classes=5, decoder_width=64)).eval()
    x = torch.randn(1, 3, 64, 80)
    with torch.no_grad():
        features = narrow.decoder.features(narrow.backbone(x))
        assert narrow(x).shape == wide(x).shape == (1, 5, 64, 80)
    expected = 32 if decoder == "sfpnext" else 64  # sfpnext's heads are half its FPN's width
    assert features.shape[1] == expected == narrow.decoder.classifier.in_channels

    def count(model):
        return sum(p.numel() for p in model.decoder.parameters())
    assert count(narrow) < count(wide) / 4


def test_sfpnext_refuses_a_width_its_group_norm_cannot_split() -> None:
    with pytest.raises(ValueError, match="sfpnext: decoder width 96 must be a multiple of 64"):
        Segmenter(SegmenterSpec("resnet18", "sfpnext", num_classes=5, decoder_width=96))


def test_decoder_learning_rate_group() -> None:
    model = Segmenter(SegmenterSpec("resnet18", "mlp", num_classes=3))
    backbone, decoder = model.param_groups(head_lr_mult=10.0)
    assert "lr_mult" not in backbone and decoder["lr_mult"] == 10.0
    assert len(backbone["params"]) + len(decoder["params"]) == len(list(model.parameters()))


def save_cam_net(path, backbone: str) -> CAMNet:
    net = CAMNet(backbone, num_classes=4)
    meta = {"backbone": backbone, "weights": "none", "pooling": "gap", "num_classes": 4,
            "classes": ["background", "a", "b", "c", "d"], "dataset": "test"}
    save_checkpoint(path, {"model": net.state_dict(), "meta": meta})
    return net


def test_init_from_cam_copies_backbone(tmp_path) -> None:
    cam = save_cam_net(tmp_path / "cam.pt", "resnet18")
    model = Segmenter(SegmenterSpec("resnet18", "aspp", num_classes=5))
    init_backbone_from_cam(model.backbone, "resnet18", tmp_path / "cam.pt")
    want = cam.backbone.state_dict()
    got = model.backbone.state_dict()
    assert got.keys() == want.keys()
    assert all(torch.equal(got[k], want[k]) for k in want)


def test_init_from_cam_backbone_mismatch(tmp_path) -> None:
    save_cam_net(tmp_path / "cam.pt", "resnet18")
    model = Segmenter(SegmenterSpec("efficientnet_lite0", "mlp", num_classes=5))
    with pytest.raises(ValueError, match=r"cam\.pt.*'resnet18'.*'efficientnet_lite0'"):
        init_backbone_from_cam(model.backbone, "efficientnet_lite0", tmp_path / "cam.pt")


def test_unknown_method_lists_known_ones() -> None:
    with pytest.raises(ValueError) as err:
        get_method("nope")
    assert "nope" in str(err.value) and all(name in str(err.value) for name in METHODS)


def test_unknown_option_is_named() -> None:
    with pytest.raises(ValueError, match="no option.*alpha"):
        get_method("ce", {"alpha": 1.0})


def test_methods_declare_known_cache_items() -> None:
    for name, method in METHODS.items():
        assert method.name == name
        assert method.needs <= NEEDS.keys(), f"{name} needs {method.needs - NEEDS.keys()}"


def test_cross_entropy_ignores_255_and_survives_empty_crops() -> None:
    logits = torch.tensor([[[[2.0, 0.0]], [[0.0, 2.0]]]], requires_grad=True)  # 1x2x1x2
    label = torch.tensor([[[0, 255]]])
    expected = torch.nn.functional.cross_entropy(logits[..., :1], label[..., :1])
    assert torch.allclose(masked_cross_entropy(logits, label), expected)
    empty = masked_cross_entropy(logits, torch.full((1, 1, 2), 255))
    empty.backward()
    assert empty.item() == 0.0 and torch.isfinite(logits.grad).all()
