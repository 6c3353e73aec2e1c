"""Images as network inputs: the normalisation every backbone here expects.

Kept apart from ``images`` (reading files), which the stages that never run a network import
without paying for torch's import (2 to 3 s a process on the project's machine:
``python -X importtime -c "import torch"``).
"""
from __future__ import annotations

import numpy as np
import torch

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

_MEAN_255 = np.asarray(IMAGENET_MEAN, dtype=np.float32) * 255
_STD_255 = np.asarray(IMAGENET_STD, dtype=np.float32) * 255


def to_tensor(image: np.ndarray) -> torch.Tensor:
    """HxWx3 uint8 -> normalised 3xHxW float32, the input every backbone here expects.

    Done in NumPy: torch's elementwise ops spread over threads that data-loading workers and
    concurrent jobs are already using, which made this 50-100x slower on a shared CPU.
    """
    normalised = (image.astype(np.float32) - _MEAN_255) / _STD_255
    return torch.from_numpy(np.ascontiguousarray(normalised.transpose(2, 0, 1)))
