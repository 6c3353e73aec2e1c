"""SegFormer's Mix Transformer (MiT-B0, MiT-B1) as a features backbone, loading the official
ImageNet files (``mit_b0.pth``, ``mit_b1.pth``) from a local path.

timm has no MiT, so it lives here, with the parameter names of the SegFormer release so that its
files load key for key. It behaves like the timm ``features_only`` models the rest of the project
uses: ``forward`` returns the four stages' maps and ``feature_info`` gives their channels and
reductions. Names: ``mit_b0`` / ``mit_b1`` (patch strides 4, 2, 2, 2: output stride 32) and
``mit_b0_s16`` / ``mit_b1_s16`` (strides 4, 2, 2, 1 as in AFA and UGRL: output stride 16, the
same weights). ``forward_with_attention`` also returns the last stage's attention maps, from which
UGRL's network derives its affinity as AFA does.

Differences from the release: no stochastic depth or dropout (SegFormer fine-tunes with a drop
path rate of 0.1; here every block is always kept), which changes no parameter.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from stages.errors import InputError, MissingInputError
from stages.io.tensor_files import load_tensor_file

EMBED_DIMS = {"mit_b0": (32, 64, 160, 256), "mit_b1": (64, 128, 320, 512)}
DEPTHS = (2, 2, 2, 2)  # both B0 and B1
NUM_HEADS = (1, 2, 5, 8)
SR_RATIOS = (8, 4, 2, 1)  # keys and values of stage i are pooled by this factor
MLP_RATIO = 4
PATCH_SIZES = (7, 3, 3, 3)
STRIDES = {"": (4, 2, 2, 2), "_s16": (4, 2, 2, 1)}
MIT_NAMES = tuple(base + suffix for base in EMBED_DIMS for suffix in STRIDES)
BLOCK_NORM_EPS = 1e-6  # the release's norm_layer for blocks and stage norms


@dataclass(frozen=True)
class FeatureInfo:
    """What timm's ``feature_info`` tells the decoders: channels and reduction of every map."""

    channel_list: tuple[int, ...]
    reduction_list: tuple[int, ...]

    def channels(self) -> list[int]:
        return list(self.channel_list)

    def reduction(self) -> list[int]:
        return list(self.reduction_list)


class OverlapPatchEmbed(nn.Module):
    def __init__(self, cin: int, dim: int, patch: int, stride: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(cin, dim, patch, stride, padding=patch // 2)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, int, int]:
        x = self.proj(x)
        h, w = x.shape[-2:]
        return self.norm(x.flatten(2).transpose(1, 2)), h, w


class EfficientAttention(nn.Module):
    """Multi-head self-attention whose keys and values come from a grid pooled by ``sr_ratio``."""

    def __init__(self, dim: int, heads: int, sr_ratio: int) -> None:
        super().__init__()
        self.heads = heads
        self.scale = (dim // heads) ** -0.5
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)
        self.sr_ratio = sr_ratio
        if sr_ratio > 1:
            self.sr = nn.Conv2d(dim, dim, sr_ratio, sr_ratio)
            self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, h: int, w: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The attended tokens and the attention (B, heads, N, N / sr_ratio^2)."""
        b, n, c = x.shape
        q = self.q(x).reshape(b, n, self.heads, c // self.heads).transpose(1, 2)
        source = x
        if self.sr_ratio > 1:
            source = self.norm(self.sr(x.transpose(1, 2).reshape(b, c, h, w)).flatten(2).transpose(1, 2))
        k, v = self.kv(source).reshape(b, -1, 2, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        attention = (q @ k.transpose(-2, -1) * self.scale).softmax(dim=-1)
        return self.proj((attention @ v).transpose(1, 2).reshape(b, n, c)), attention


class DepthwiseConv(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, 3, 1, 1, groups=dim)

    def forward(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        b, n, c = x.shape
        return self.dwconv(x.transpose(1, 2).reshape(b, c, h, w)).flatten(2).transpose(1, 2)


class MixFFN(nn.Module):
    """Linear, 3x3 depthwise convolution (the positional information), GELU, linear."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.dwconv = DepthwiseConv(hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        return self.fc2(F.gelu(self.dwconv(self.fc1(x), h, w)))


class Block(nn.Module):
    def __init__(self, dim: int, heads: int, sr_ratio: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=BLOCK_NORM_EPS)
        self.attn = EfficientAttention(dim, heads, sr_ratio)
        self.norm2 = nn.LayerNorm(dim, eps=BLOCK_NORM_EPS)
        self.mlp = MixFFN(dim, dim * MLP_RATIO)

    def forward(self, x: torch.Tensor, h: int, w: int) -> tuple[torch.Tensor, torch.Tensor]:
        attended, attention = self.attn(self.norm1(x), h, w)
        x = x + attended
        return x + self.mlp(self.norm2(x), h, w), attention


class MixTransformer(nn.Module):
    """Four stages of overlapping patch embedding, transformer blocks and a norm."""

    def __init__(self, name: str) -> None:
        super().__init__()
        if name not in MIT_NAMES:
            raise InputError(f"unknown MiT {name!r} (use one of {', '.join(MIT_NAMES)})")
        base, suffix = name[:6], name[6:]
        dims, strides = EMBED_DIMS[base], STRIDES[suffix]
        self.name = name
        reductions, total = [], 1
        cin = 3
        for i, (dim, depth, heads, sr, patch, stride) in enumerate(
                zip(dims, DEPTHS, NUM_HEADS, SR_RATIOS, PATCH_SIZES, strides), 1):
            setattr(self, f"patch_embed{i}", OverlapPatchEmbed(cin, dim, patch, stride))
            setattr(self, f"block{i}", nn.ModuleList(Block(dim, heads, sr) for _ in range(depth)))
            setattr(self, f"norm{i}", nn.LayerNorm(dim, eps=BLOCK_NORM_EPS))
            total *= stride
            reductions.append(total)
            cin = dim
        self.feature_info = FeatureInfo(tuple(dims), tuple(reductions))
        self.apply(_init_weights)

    def forward_with_attention(self, x: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """The four maps (B, C_i, H_i, W_i) and the last stage's attention maps, one per block."""
        feats, attentions = [], []
        for i in range(1, 5):
            tokens, h, w = getattr(self, f"patch_embed{i}")(x)
            attentions = []
            for block in getattr(self, f"block{i}"):
                tokens, attention = block(tokens, h, w)
                attentions.append(attention)
            tokens = getattr(self, f"norm{i}")(tokens)
            x = tokens.transpose(1, 2).reshape(tokens.shape[0], -1, h, w)
            feats.append(x)
        return feats, attentions

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return self.forward_with_attention(x)[0]


def _init_weights(m: nn.Module) -> None:
    """The release's initialisation: truncated normal linears, fan-out normal convolutions."""
    if isinstance(m, nn.Linear):
        nn.init.trunc_normal_(m.weight, std=0.02)
        nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)
    elif isinstance(m, nn.Conv2d):
        fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels // m.groups
        nn.init.normal_(m.weight, 0, (2.0 / fan_out) ** 0.5)
        nn.init.zeros_(m.bias)


def create_mit(name: str, weights: str = "none") -> MixTransformer:
    """A MiT backbone, random (``none``) or from the official ImageNet file at path ``weights``."""
    model = MixTransformer(name)
    if weights != "none":
        load_mit_weights(model, weights)
    return model


def load_mit_weights(model: MixTransformer, path: str | os.PathLike) -> None:
    """Load a SegFormer ImageNet file: ``head.*`` (the ImageNet classifier) dropped, every other
    key and shape checked; the first mismatch is named, in the file's key order."""
    path = Path(path)
    if not path.is_file():
        raise MissingInputError(f"MiT weights file {path} not found (weights must be 'none' or a "
                                f"local copy of SegFormer's {model.name[:6]}.pth)")
    state = load_tensor_file(path, "MiT weights file", "get the file again")
    if isinstance(state.get("state_dict"), dict):  # files saved by mmcv's trainers nest it
        state = state["state_dict"]
    state = {k: v for k, v in state.items() if not k.startswith("head.")}
    target = model.state_dict()
    for key, value in state.items():
        if key not in target:
            raise InputError(f"{path}: key {key!r} has no counterpart in {model.name} (not a {model.name[:6]} file?)")
        if tuple(value.shape) != tuple(target[key].shape):
            raise InputError(f"{path}: {key!r} has shape {tuple(value.shape)}, {model.name} needs "
                             f"{tuple(target[key].shape)} (a file of another MiT size?)")
    missing = [k for k in target if k not in state]
    if missing:
        raise InputError(f"{path}: no weights for {missing[0]!r} ({len(missing)} keys of {model.name} missing)")
    model.load_state_dict(state)
