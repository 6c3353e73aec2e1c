"""What a `weights` key may name besides a file: importable without torch, so that the workflow
refuses a weights file that is not there before any job runs (workflow/rules/common.smk)."""
from __future__ import annotations

NO_WEIGHTS = "none"
EFFICIENTNET_LITE0_IMAGENET = "efficientnet_lite0_imagenet"
EFFICIENTNET_LITE1_IMAGENET = "efficientnet_lite1_imagenet"
EFFICIENTNET_LITE2_IMAGENET = "efficientnet_lite2_imagenet"
# each one's package and timm backbone: stages/models/efficientnet_lite.py (a test keeps them equal)
LITE_IMAGENET_WEIGHTS = (EFFICIENTNET_LITE0_IMAGENET, EFFICIENTNET_LITE1_IMAGENET, EFFICIENTNET_LITE2_IMAGENET)
NAMED_WEIGHTS = (NO_WEIGHTS, *LITE_IMAGENET_WEIGHTS)
WEIGHT_SUFFIXES = (".pth", ".pt", ".safetensors")
