"""Decoded arrays kept in memory: decoded once, read-only, within the byte budget."""
from __future__ import annotations

import numpy as np
import pytest

from stages.data.decoded import DecodedCache


def test_each_item_is_decoded_once_within_the_budget() -> None:
    decodes: list[int] = []

    def decode(i: int):
        decodes.append(i)
        return (np.full((10, 10), i, np.uint8), np.zeros(50, np.uint8))  # 150 bytes

    cache = DecodedCache(budget_bytes=300)
    first = [cache.get(i, lambda i=i: decode(i)) for i in range(3)]
    again = [cache.get(i, lambda i=i: decode(i)) for i in range(3)]
    assert decodes == [0, 1, 2, 2]  # the third item is past the budget: decoded each time
    assert again[0] is first[0] and again[1] is first[1]
    assert cache.used == 300 and sorted(cache.items) == [0, 1]
    assert int(again[1][0][0, 0]) == 1
    with pytest.raises(ValueError, match="read-only"):
        again[0][0][0, 0] = 7  # a transform writing in place would change later epochs
    assert first[2][0].flags.writeable  # not kept: the caller's own array
