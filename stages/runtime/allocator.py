"""Keep freed CPU memory in the process instead of handing it back to the kernel after each use.

glibc's malloc serves large blocks (above a threshold that adapts up to 32 MB) with fresh
``mmap`` pages and gives the top of its heap back once it exceeds a trim threshold. A CPU
training step allocates and frees tens of MB of activations and gradients, so every step paid
for the same memory again in page faults: 4k to 17k a step for the default segmenter and CAM
network, whose steps took 0.93x the time without them (``python -m benchmarks.allocator``). Fixed
thresholds keep the freed blocks for the next step; the process then holds its peak memory
until it ends, which a training or inference job does anyway.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import functools

# mallopt parameters (malloc.h)
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 * 2 ** 20  # glibc's ceiling (HEAP_MAX / 2 on 64-bit); blocks above it still use mmap
TRIM_THRESHOLD = 2 ** 31 - 1  # the largest an int holds: up to 2 GB of free heap top is kept


@functools.cache
def keep_freed_memory() -> bool:
    """Fix glibc's thresholds for this process; False where the C library is not glibc (nothing done)."""
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    libc = ctypes.CDLL(name)
    mallopt = getattr(libc, "mallopt", None)
    if mallopt is None or not hasattr(libc, "gnu_get_libc_version"):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) and mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
