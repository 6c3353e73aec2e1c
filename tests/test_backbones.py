"""Backbones, the EfficientNet-Lite0 ImageNet loader and the CAM network."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import save_file

from stages.data.images import load_rgb
from stages.data.tensors import to_tensor
from stages.data.transforms import resize
from stages.errors import InputError
from stages.models import efficientnet_lite0
from stages.models.backbones import TESTED_BACKBONES, create_backbone
from stages.models.cam_net import CAMNet

VOC_SAMPLE = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "voc-sample"
IMAGENET_DOGS = range(151, 269)  # ImageNet-1k class indices of the dog breeds


@pytest.mark.parametrize("name", TESTED_BACKBONES)
def test_backbone_reports_its_feature_maps(name: str) -> None:
    model = create_backbone(name).eval()
    channels, reductions = model.feature_info.channels(), model.feature_info.reduction()
    with torch.no_grad():
        feats = model(torch.randn(1, 3, 64, 64))
    assert len(feats) == len(channels) == len(reductions)
    for f, c, r in zip(feats, channels, reductions):
        assert f.shape == (1, c, 64 // r, 64 // r)
    assert reductions[-1] == 32


@pytest.fixture(scope="module")
def lite0_source() -> dict[str, torch.Tensor]:
    return torch.load(efficientnet_lite0.package_weights_path(), map_location="cpu", weights_only=True)


@pytest.fixture(scope="module")
def lite0_mapped() -> dict[str, torch.Tensor]:
    return efficientnet_lite0.imagenet_state_dict()


def test_lite0_every_key_mapped_with_its_tensor(lite0_source, lite0_mapped) -> None:
    timm_keys = set(timm.create_model("efficientnet_lite0").state_dict())
    assert set(lite0_mapped) == timm_keys
    assert len(lite0_mapped) == len(lite0_source)
    for src, dst in [("_conv_stem.weight", "conv_stem.weight"), ("_bn0.running_var", "bn1.running_var"),
                     ("_blocks.0._project_conv.weight", "blocks.0.0.conv_pw.weight"),
                     ("_blocks.1._expand_conv.weight", "blocks.1.0.conv_pw.weight"),
                     ("_blocks.15._project_conv.weight", "blocks.6.0.conv_pwl.weight"),
                     ("_blocks.15._bn2.bias", "blocks.6.0.bn3.bias"), ("_fc.weight", "classifier.weight")]:
        assert torch.equal(lite0_mapped[dst], lite0_source[src]), (src, dst)


def test_lite0_features_model_matches_full_model(lite0_mapped) -> None:
    full = timm.create_model("efficientnet_lite0").eval()
    full.load_state_dict(lite0_mapped)
    features = create_backbone("efficientnet_lite0", "efficientnet_lite0_imagenet").eval()
    x = torch.randn(1, 3, 96, 96)
    with torch.no_grad():
        expected = full.blocks(full.bn1(full.conv_stem(x)))
        assert torch.allclose(features(x)[-1], expected, atol=1e-5)


def test_lite0_imagenet_prediction_is_sane(lite0_mapped) -> None:
    image = VOC_SAMPLE / "JPEGImages" / "2007_001763.jpg"  # a dog (with a cat) on a sofa
    if not image.is_file():
        pytest.skip(f"shared sample data not found at {VOC_SAMPLE} (../shared beside the repo)")
    full = timm.create_model("efficientnet_lite0").eval()
    full.load_state_dict(lite0_mapped)
    with torch.no_grad():
        probs = full(to_tensor(resize(load_rgb(image), (224, 224))).unsqueeze(0)).softmax(1)[0]
    assert int(probs.argmax()) in IMAGENET_DOGS
    assert float(probs.max()) > 0.3


def test_lite0_mapping_names_a_bad_key(lite0_source) -> None:
    reference = timm.create_model("efficientnet_lite0")
    prefixes = efficientnet_lite0._timm_block_prefixes(reference)
    bad = dict(lite0_source)
    bad["_blocks.3._depthwise_conv.weight"] = torch.zeros(144, 1, 3, 3)
    with pytest.raises(ValueError, match=r"_blocks\.3\._depthwise_conv\.weight.*\(144, 1, 3, 3\)"):
        efficientnet_lite0.map_state_dict(bad, reference.state_dict(), prefixes, origin="bad.pth")
    extra = {**lite0_source, "_swish.weight": torch.zeros(1)}
    with pytest.raises(ValueError, match="_swish.weight"):
        efficientnet_lite0.map_state_dict(extra, reference.state_dict(), prefixes)
    short = {k: v for k, v in lite0_source.items() if not k.startswith("_fc.")}
    with pytest.raises(ValueError, match="classifier"):
        efficientnet_lite0.map_state_dict(short, reference.state_dict(), prefixes)


def test_weights_errors_name_the_thing(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="'resnet18'"):
        create_backbone("resnet18", "efficientnet_lite0_imagenet")
    missing = tmp_path / "nowhere.pth"
    with pytest.raises(FileNotFoundError, match="nowhere.pth"):
        create_backbone("resnet18", str(missing))
    with pytest.raises(ValueError, match="resnet_nope"):
        create_backbone("resnet_nope")
    other = tmp_path / "resnet50.pth"
    torch.save(timm.create_model("resnet50").state_dict(), other)
    with pytest.raises(ValueError, match="resnet50.pth.*'resnet18'"):
        create_backbone("resnet18", str(other))


def test_weights_from_local_file(tmp_path: Path) -> None:
    source = timm.create_model("resnet18")
    path = tmp_path / "r18.pth"
    torch.save(source.state_dict(), path)
    model = create_backbone("resnet18", str(path))
    assert torch.equal(model.state_dict()["layer4.1.conv2.weight"], source.state_dict()["layer4.1.conv2.weight"])


def test_weights_from_safetensors_and_a_misnamed_copy(tmp_path: Path) -> None:
    source = timm.create_model("resnet18")
    path = tmp_path / "r18.safetensors"
    save_file(source.state_dict(), path)
    model = create_backbone("resnet18", str(path))
    assert torch.equal(model.state_dict()["layer4.1.conv2.weight"], source.state_dict()["layer4.1.conv2.weight"])
    misnamed = tmp_path / "r18.pth"
    shutil.copy(path, misnamed)
    with pytest.raises(InputError, match=rf"^{misnamed}: a safetensors file named .pth: rename it to r18.safetensors$"):
        create_backbone("resnet18", str(misnamed))


@pytest.mark.parametrize("pooling", ["gap", "gmp"])
def test_cam_net_logits_pool_the_cams(pooling: str) -> None:
    net = CAMNet("resnet18", num_classes=5, pooling=pooling).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        cams, logits = net.cams(x), net(x)
    assert cams.shape == (2, 5, 2, 2) and logits.shape == (2, 5)
    pooled = cams.mean(dim=(2, 3)) if pooling == "gap" else cams.amax(dim=(2, 3))
    assert torch.allclose(logits, pooled)


def test_cam_net_param_groups_cover_everything_once() -> None:
    net = CAMNet("resnet18", num_classes=3)
    backbone, head = net.param_groups(head_lr_mult=10.0)
    assert head["lr_mult"] == 10.0 and "lr_mult" not in backbone
    assert len(backbone["params"]) + len(head["params"]) == len(list(net.parameters()))
    assert head["params"] == [net.classifier.weight]
    with pytest.raises(ValueError, match="avg"):
        CAMNet("resnet18", num_classes=3, pooling="avg")
