"""Convolutions as one matrix product: the same function as ``F.conv2d``, used only where it pays."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from stages.models import matmul_conv
from stages.models.backbones import create_backbone
from stages.models.matmul_conv import MatmulConv2d, conv2d_as_matmul, use_matmul_convs


@pytest.mark.parametrize("kernel,stride,padding,dilation,bias", [
    (3, 1, 1, 1, False),  # resnet's 3x3
    (3, 2, 1, 1, True),  # a stage's first, strided convolution
    (3, 1, 2, 2, False),  # dilated (output stride 16)
    (7, 2, 3, 1, False),  # resnet's stem
    (3, 1, 0, 1, True),  # no padding
])
def test_matmul_is_the_convolution_with_its_gradients(kernel, stride, padding, dilation, bias) -> None:
    torch.manual_seed(0)
    x = torch.randn(2, 5, 9, 8, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(7, 5, kernel, kernel, dtype=torch.float64, requires_grad=True)
    b = torch.randn(7, dtype=torch.float64, requires_grad=True) if bias else None
    args = ((stride,) * 2, (padding,) * 2, (dilation,) * 2)
    expected = F.conv2d(x, weight, b, stride, padding, dilation)
    got = conv2d_as_matmul(x, weight, b, *args)
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected)
    inputs = (x, weight) + ((b,) if bias else ())
    assert torch.autograd.gradcheck(lambda *t: conv2d_as_matmul(t[0], t[1], t[2] if bias else None, *args), inputs)


def _counting(monkeypatch) -> list[int]:
    calls: list[int] = []
    original = matmul_conv.conv2d_as_matmul

    def counted(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)
    monkeypatch.setattr(matmul_conv, "conv2d_as_matmul", counted)
    return calls


def test_only_bf16_on_small_cpu_maps_takes_the_matmul(monkeypatch) -> None:
    monkeypatch.setattr(matmul_conv, "ON_AMX_CPU", True)  # the path is taken only there, tested anywhere
    calls = _counting(monkeypatch)
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(8, 16, 3, padding=1)
    use_matmul_convs(conv)  # the module itself qualifies
    assert isinstance(conv, MatmulConv2d)
    reference = torch.nn.Conv2d(8, 16, 3, padding=1)
    reference.load_state_dict(conv.state_dict())
    small = torch.randn(4, 8, 6, 6).contiguous(memory_format=torch.channels_last)  # 36 pixels: MAX_PIXELS
    large = torch.randn(4, 8, 7, 7)

    torch.testing.assert_close(conv(small), reference(small), rtol=0, atol=0)  # fp32: oneDNN's path
    with torch.autocast("cpu", dtype=torch.bfloat16):
        torch.testing.assert_close(conv(large), reference(large), rtol=0, atol=0)
        assert not calls
        got, expected = conv(small), reference(small)
    assert calls and got.dtype == expected.dtype == torch.bfloat16
    torch.testing.assert_close(got.float(), expected.float(), rtol=0.02, atol=0.02)
    frozen = conv.to(torch.bfloat16)  # inference copies: bf16 weights, bf16 inputs, no autocast
    assert frozen(small.to(torch.bfloat16)).dtype == torch.bfloat16 and len(calls) == 2
    monkeypatch.setattr(matmul_conv, "ON_AMX_CPU", False)  # oneDNN's kernel on every other CPU
    torch.testing.assert_close(frozen(small.to(torch.bfloat16)), reference.to(torch.bfloat16)(small.to(torch.bfloat16)),
                               rtol=0, atol=0)
    assert len(calls) == 2


def test_backbones_swap_plain_convolutions_and_keep_their_state() -> None:
    import timm

    torch.manual_seed(0)
    backbone = create_backbone("resnet18")
    plain = timm.create_model("resnet18", features_only=True, pretrained=False)
    assert plain.state_dict().keys() == backbone.state_dict().keys()
    kinds = {type(m) for m in backbone.modules() if isinstance(m, torch.nn.Conv2d)}
    assert kinds == {MatmulConv2d, torch.nn.Conv2d}  # the 1x1 convolutions stay as they were
    assert all(m.kernel_size == (1, 1) for m in backbone.modules() if type(m) is torch.nn.Conv2d)
    depthwise = torch.nn.Conv2d(8, 8, 3, groups=8)
    assert use_matmul_convs(depthwise) == 0 and type(depthwise) is torch.nn.Conv2d
