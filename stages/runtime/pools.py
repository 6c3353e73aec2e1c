"""How the process pools of per-image work (the CRF of pseudo labels, drawing the toy set) start."""
from __future__ import annotations

import multiprocessing as mp


def pool_context(preload: str) -> mp.context.BaseContext:
    """forkserver (Python 3.14's default) where available: forking the calling process itself is
    unsafe once threads run (progress bars, BLAS), and preloading ``preload`` (a module name) makes
    workers start with its imports done instead of redoing them as spawn would."""
    if "forkserver" not in mp.get_all_start_methods():
        return mp.get_context("spawn")
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload([preload])
    return ctx
