"""Methods by name. Adding one = one module under stages/methods/, one entry in ``METHODS`` and
its block in the config schema (`variants` in workflow/schemas/config.schema.yaml)."""
from __future__ import annotations

import dataclasses
import os
from typing import Any

import torch
from torch import nn

from stages.errors import InputError
from stages.io.checkpoint import load_checkpoint
from stages.methods.base import NEEDS, Method, TrainInputs
from stages.methods.ce import CrossEntropy
from stages.methods.eil import EIL
from stages.methods.rss import RSS
from stages.methods.ugrl import UGRL
from stages.models.decoders import DECODER_CHANNELS
from stages.models.segmenter import SegmenterSpec

METHODS: dict[str, type[Method]] = {m.name: m for m in (CrossEntropy, EIL, RSS, UGRL)}


def method_options(cls: type[Method]) -> set[str]:
    """The options a method takes: its dataclass fields that are set at construction."""
    return {f.name for f in dataclasses.fields(cls) if f.init}


def get_method(name: str, options: dict[str, Any] | None = None) -> Method:
    """The method called ``name``, configured with ``options`` (its dataclass fields)."""
    if name not in METHODS:
        raise InputError(f"unknown method {name!r}; known methods: {', '.join(sorted(METHODS))}")
    cls = METHODS[name]
    accepted = method_options(cls)
    unknown = sorted(set(options or {}) - accepted)
    if unknown:
        raise InputError(f"method {name!r} has no option(s) {', '.join(unknown)}; "
                         f"its options: {', '.join(sorted(accepted)) or 'none'}")
    return cls(**(options or {}))


def missing_inputs(method: Method, inputs: TrainInputs) -> list[str]:
    """How to provide each cache item ``method`` needs that ``inputs`` lacks (empty when complete)."""
    ids = inputs.index.ids(inputs.split)
    split_has_masks = bool(ids) and inputs.index.mask_path(ids[0], inputs.split).is_file()
    provided = {
        "pseudo_labels": inputs.pseudo_labels is not None,
        "scribbles": inputs.scribbles is not None,
        "cam_checkpoint": inputs.cam_checkpoint is not None,
        "gt_masks": split_has_masks,
    }
    return [NEEDS[need] for need in sorted(method.needs) if not provided[need]]


def load_trained_model(path: str | os.PathLike, device: str | torch.device) -> tuple[nn.Module, dict]:
    """Rebuild the model train_seg saved at ``path`` (through its method) in eval mode, with its meta."""
    state = load_checkpoint(path)
    if "model" not in state or "meta" not in state:
        raise InputError(f"{path}: not a trained segmenter file (needs 'model' and 'meta')")
    meta = state["meta"]
    if "method" not in meta:
        raise InputError(f"{path}: not a trained segmenter file (its meta has no 'method'; "
                         f"a CAM network file?)")
    method = get_method(meta["method"], meta["method_options"])
    # weights="none" and no inputs: the saved state replaces whatever the model started from
    # files written before the width option have the default width
    spec = SegmenterSpec(backbone=meta["backbone"], decoder=meta["decoder"], num_classes=len(meta["classes"]),
                         decoder_width=meta.get("decoder_width", DECODER_CHANNELS))
    model = method.build_model(spec, None)
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as exc:
        raise InputError(f"{path}: weights do not fit a {spec.backbone}/{spec.decoder} {meta['method']} model: "
                         f"{exc}") from exc
    return model.to(device).eval(), meta
