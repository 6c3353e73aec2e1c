"""bf16 convolutions on small CPU feature maps as one matrix product.

oneDNN's bf16 convolution spends much of a training step on the smallest maps: a 512 -> 512 3x3
convolution on resnet18's last stage (16 crops of 96 px, a 3x3 map) took 32 ms forward and
backward on this project's AMX CPU, 6 ms of it forward; on a 6x6 map, 4x the pixels, 35 ms, so
the cost is fixed work per call, not arithmetic. The same convolution as one matrix product of
the nine shifted (zero-padded) copies of the map -- "im2col" in channels-last order, where the
shifts are slices and the product's output is already the channels-last result -- took 12 ms.

``MatmulConv2d`` computes that way where it pays: bf16 on a CPU with AMX and an output of at most
``MAX_PIXELS`` pixels; elsewhere (fp32, a GPU, larger maps, a CPU without AMX) it is an ordinary
``nn.Conv2d``. On an AMD EPYC (Zen 4, AVX512-BF16 without AMX) oneDNN's kernel has no such fixed
cost (the same 3x3-map convolution: 19.9 ms, the product 21.5 ms) and the steps and passes came out
0.97 to 1.05x either way, so oneDNN keeps them there.
Weights and state dicts are the ordinary ones. ``python -m benchmarks.matmul_conv`` measures the
step times and the choice of ``MAX_PIXELS``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from stages.runtime.cpu_features import has_amx

# Largest output map (pixels) computed as a matrix product. On the AMX CPU (resnet18 steps, 1 thread)
# the product wins on resnet18's 3x3 to 6x6 maps and loses from 8x8 on (benchmarks/matmul_conv.py).
MAX_PIXELS = 36
# Whether this CPU is one where the product pays.
ON_AMX_CPU = has_amx()


def _output_size(size: int, kernel: int, stride: int, padding: int, dilation: int) -> int:
    """One side of a convolution's output (``nn.Conv2d``'s formula)."""
    return (size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1


def conv2d_as_matmul(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                     stride: tuple[int, int], padding: tuple[int, int], dilation: tuple[int, int]) -> torch.Tensor:
    """``F.conv2d`` (groups 1, zero padding) as one matrix product, in ``x``'s dtype; the result
    is NCHW in channels-last memory."""
    b, c, h, w = x.shape
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = weight.shape[2:], stride, padding, dilation
    oh, ow = _output_size(h, kh, sh, ph, dh), _output_size(w, kw, sw, pw, dw)
    padded = F.pad(x.permute(0, 2, 3, 1), (0, 0, pw, pw, ph, ph))  # (B, H + 2ph, W + 2pw, C)
    taps = [padded[:, i * dh: i * dh + sh * (oh - 1) + 1: sh, j * dw: j * dw + sw * (ow - 1) + 1: sw]
            for i in range(kh) for j in range(kw)]
    columns = torch.cat(taps, dim=3).reshape(b * oh * ow, kh * kw * c)
    out = columns @ weight.to(x.dtype).permute(0, 2, 3, 1).reshape(weight.shape[0], -1).t()
    if bias is not None:
        out = out + bias.to(x.dtype)
    return out.view(b, oh, ow, -1).permute(0, 3, 1, 2)


def _output_pixels(conv: nn.Conv2d, height: int, width: int) -> int:
    h, w = (_output_size(*side) for side in
            zip((height, width), conv.kernel_size, conv.stride, conv.padding, conv.dilation))
    return h * w


class MatmulConv2d(nn.Conv2d):
    """An ``nn.Conv2d`` that computes bf16 on small AMX-CPU maps as one matrix product (module docstring)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        autocast = torch.is_autocast_enabled("cpu")
        dtype = torch.get_autocast_dtype("cpu") if autocast else x.dtype
        if (not ON_AMX_CPU or x.device.type != "cpu" or dtype != torch.bfloat16
                or _output_pixels(self, x.shape[-2], x.shape[-1]) > MAX_PIXELS):
            return super().forward(x)
        with torch.autocast("cpu", enabled=False):
            return conv2d_as_matmul(x.to(dtype), self.weight, self.bias, self.stride, self.padding, self.dilation)


def use_matmul_convs(model: nn.Module) -> int:
    """Make every plain zero-padded convolution of ``model`` with a kernel larger than 1x1 a
    ``MatmulConv2d``, in place (same parameters, same state dict); returns how many."""
    count = 0
    for module in model.modules():
        if (type(module) is nn.Conv2d and module.groups == 1 and module.padding_mode == "zeros"
                and not isinstance(module.padding, str) and module.kernel_size != (1, 1)):
            module.__class__ = MatmulConv2d
            count += 1
    return count
