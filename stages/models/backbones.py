"""Backbones: timm ``features_only`` models, with pretrained weights from local files only.

timm is the registry; this module only decides where weights come from, because nothing can be
downloaded on the machines this runs on: ``none`` (random init), ``efficientnet_liteK_imagenet``
for K = 0, 1, 2 (the real ImageNet weights of the installable packages, see efficientnet_lite.py),
or a local .pth/.safetensors file passed to timm through ``pretrained_cfg_overlay`` so that timm's
own key filters (e.g. dropping the classifier) still apply.
"""
from __future__ import annotations

from pathlib import Path

import timm
from torch import nn

from stages.errors import InputError, MissingInputError
from stages.io.tensor_files import load_tensor_file
from stages.models import efficientnet_lite, mit
from stages.models.matmul_conv import use_matmul_convs
from stages.models.weight_names import NAMED_WEIGHTS, WEIGHT_SUFFIXES

TESTED_BACKBONES = ("resnet18", "resnet50", "resnet101", "convnextv2_nano", "efficientnet_lite0", "efficientnet_lite1",
                    "efficientnet_lite2")


def create_backbone(name: str, weights: str = "none") -> nn.Module:
    """A timm features_only model returning every stage's feature map; its convolutions compute
    bf16 on small CPU maps as matrix products (``matmul_conv``).

    Callers read ``.feature_info.channels()`` / ``.reduction()`` instead of hard-coding widths.
    SegFormer's MiT (``mit_b0``, ``mit_b1``, ``*_s16``), which timm lacks, comes from mit.py.
    """
    model = _create(name, weights)
    use_matmul_convs(model)
    return model


def _create(name: str, weights: str) -> nn.Module:
    if name in mit.MIT_NAMES:
        return mit.create_mit(name, weights)
    if not timm.is_model(name):
        raise InputError(f"unknown backbone {name!r}: not a timm model (tested: {', '.join(TESTED_BACKBONES)})")
    if weights == "none":
        return timm.create_model(name, features_only=True, pretrained=False)
    if weights in efficientnet_lite.RELEASES:
        timm_name = efficientnet_lite.RELEASES[weights].timm_name
        if name != timm_name:
            raise InputError(f"weights {weights!r} exist only for backbone {timm_name!r}, not for backbone {name!r}")
        model = timm.create_model(name, features_only=True, pretrained=False)
        efficientnet_lite.load_into_features(model, weights)
        return model
    return _from_file(name, Path(weights))


def _from_file(name: str, path: Path) -> nn.Module:
    if not path.is_file():
        named = ", ".join(map(repr, NAMED_WEIGHTS))
        raise MissingInputError(f"backbone weights file {path} not found (weights must be one of {named} "
                                f"or an existing {'/'.join(WEIGHT_SUFFIXES)} file)")
    if path.suffix not in WEIGHT_SUFFIXES:
        raise InputError(f"backbone weights file {path}: expected a {'/'.join(WEIGHT_SUFFIXES)} file")
    # Read here first (a torch zip file only mapped, cheaply) so that a damaged, misnamed or refused
    # file is named as such; timm reads it again to apply its own key filters.
    load_tensor_file(path, "weights file", "get the file again", lazy=True)
    try:
        return timm.create_model(name, features_only=True, pretrained=True,
                                 pretrained_cfg_overlay=dict(file=str(path)))
    except (RuntimeError, KeyError, ValueError) as exc:
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        more = f" ({len(lines) - 2} more lines)" if len(lines) > 2 else ""
        raise InputError(f"backbone weights file {path} does not fit backbone {name!r}: "
                         f"{' '.join(lines[:2])}{more}") from exc
