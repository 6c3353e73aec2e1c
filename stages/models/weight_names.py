"""What a `weights` key may name besides a file: importable without torch, so that the workflow
refuses a weights file that is not there before any job runs (workflow/rules/common.smk)."""
from __future__ import annotations

NO_WEIGHTS = "none"
EFFICIENTNET_LITE0_IMAGENET = "efficientnet_lite0_imagenet"
NAMED_WEIGHTS = (NO_WEIGHTS, EFFICIENTNET_LITE0_IMAGENET)
WEIGHT_SUFFIXES = (".pth", ".pt", ".safetensors")
