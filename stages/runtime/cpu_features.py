"""What this CPU can do, from torch's own probes: both the precision choice and the small-map
convolutions (``stages.models.matmul_conv``) depend on it."""
from __future__ import annotations

import torch


def _probe(name: str) -> bool:
    """torch's CPU probe ``torch.cpu.<name>`` (absent before torch 2.3: False)."""
    probe = getattr(torch.cpu, name, None)
    return bool(probe is not None and probe())


def has_amx() -> bool:
    """AMX tiles (Intel Sapphire Rapids and later)."""
    return _probe("_is_amx_tile_supported")


def has_avx512_bf16() -> bool:
    """AVX512-BF16 dot products (e.g. AMD Zen 4, Intel Cooper Lake)."""
    return _probe("_is_avx512_bf16_supported")
