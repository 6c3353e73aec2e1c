"""SegFormer's MiT backbone (stages/models/mit.py): shapes at both output strides, use by every
stage's model, and loading an official-format ImageNet file (built here: none is available offline)."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from stages.models.backbones import create_backbone
from stages.models.cam_net import CAMNet
from stages.models.mit import MixTransformer
from stages.models.segmenter import Segmenter, SegmenterSpec


@pytest.mark.parametrize("name, channels, reductions", [
    ("mit_b0", [32, 64, 160, 256], [4, 8, 16, 32]),
    ("mit_b1", [64, 128, 320, 512], [4, 8, 16, 32]),
    ("mit_b1_s16", [64, 128, 320, 512], [4, 8, 16, 16]),
])
def test_forward_shapes_at_stride_32_and_16(name: str, channels: list[int], reductions: list[int]) -> None:
    model = create_backbone(name)
    assert model.feature_info.channels() == channels and model.feature_info.reduction() == reductions
    feats = model(torch.randn(2, 3, 64, 96))
    assert [tuple(f.shape) for f in feats] == [(2, c, 64 // r, 96 // r) for c, r in zip(channels, reductions)]
    feats, attentions = model.forward_with_attention(torch.randn(1, 3, 64, 96))
    n = (64 // reductions[-1]) * (96 // reductions[-1])
    assert [tuple(a.shape) for a in attentions] == [(1, 8, n, n)] * 2  # last stage: 8 heads, 2 blocks
    assert torch.allclose(attentions[0].sum(-1), torch.ones(1, 8, n))


def test_every_stage_model_takes_it() -> None:
    cam = CAMNet("mit_b0_s16", num_classes=3)
    assert cam(torch.randn(2, 3, 64, 64)).shape == (2, 3) and cam.cams(torch.randn(1, 3, 64, 64)).shape == (1, 3, 4, 4)
    for decoder in ("mlp", "aspp"):
        seg = Segmenter(SegmenterSpec("mit_b0", decoder, num_classes=4))
        assert seg(torch.randn(1, 3, 50, 70)).shape == (1, 4, 50, 70)


def official_file(tmp_path: Path, name: str = "mit_b1", **edit) -> Path:
    """A file laid out like SegFormer's ImageNet release: the backbone's keys plus the classifier."""
    torch.manual_seed(1)
    state = MixTransformer(name).state_dict()
    state["head.weight"], state["head.bias"] = torch.randn(1000, 512 if name == "mit_b1" else 256), torch.zeros(1000)
    for key, value in edit.items():
        if value is None:
            del state[key.replace("__", ".")]
        else:
            state[key.replace("__", ".")] = value
    path = tmp_path / f"{name}.pth"
    torch.save(state, path)
    return path


def test_official_file_loads_into_both_strides(tmp_path: Path) -> None:
    path = official_file(tmp_path)
    expected = torch.load(path, weights_only=True)
    for name in ("mit_b1", "mit_b1_s16"):
        state = create_backbone(name, str(path)).state_dict()
        assert state.keys() == {k for k in expected if not k.startswith("head.")}
        assert all(torch.equal(state[k], expected[k]) for k in state), name
    nested = tmp_path / "nested.pth"
    torch.save({"state_dict": expected, "meta": {}}, nested)
    assert torch.equal(create_backbone("mit_b1", str(nested)).state_dict()["norm4.weight"], expected["norm4.weight"])


def test_mismatches_are_refused_naming_the_key(tmp_path: Path) -> None:
    bad_shape = official_file(tmp_path, block3__1__attn__q__weight=torch.zeros(320, 64))
    with pytest.raises(ValueError,
                       match=r"'block3\.1\.attn\.q\.weight' has shape \(320, 64\), mit_b1 needs \(320, 320\)"):
        create_backbone("mit_b1", str(bad_shape))
    (tmp_path / "missing").mkdir()
    missing = official_file(tmp_path / "missing", norm2__bias=None)
    with pytest.raises(ValueError, match=r"no weights for 'norm2\.bias'"):
        create_backbone("mit_b1", str(missing))
    (tmp_path / "extra").mkdir()
    extra = official_file(tmp_path / "extra", block5__0__weight=torch.zeros(1))
    with pytest.raises(ValueError, match=r"'block5\.0\.weight' has no counterpart in mit_b1"):
        create_backbone("mit_b1", str(extra))
    b0 = official_file(tmp_path, "mit_b0")
    with pytest.raises(ValueError, match=r"'patch_embed1\.proj\.weight' has shape \(32, 3, 7, 7\)"):
        create_backbone("mit_b1", str(b0))
    with pytest.raises(FileNotFoundError, match="mit_b1.pth"):
        create_backbone("mit_b1", str(tmp_path / "nowhere" / "mit_b1.pth"))
