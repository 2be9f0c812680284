from __future__ import annotations

import numpy as np
import zarr
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.io.chunk_cache import ChunkCache, read_cached

DATA = np.arange(20 * 30 * 40, dtype=np.uint16).reshape(20, 30, 40)


def array(tmp_path_factory) -> zarr.Array:
    path = tmp_path_factory.getbasetemp() / "cache.zarr"
    if not path.exists():
        arr = zarr.create_array(str(path), shape=DATA.shape, chunks=(7, 8, 9), dtype=DATA.dtype)
        arr[...] = DATA
    return zarr.open_array(str(path), mode="r")


@settings(max_examples=50, deadline=None)
@given(st.data())
def test_cached_reads_equal_direct_reads(tmp_path_factory, data):
    arr = array(tmp_path_factory)
    cache = ChunkCache(budget_bytes=6 * 7 * 8 * 9 * 2)
    for _ in range(3):
        box = []
        for size in DATA.shape:
            a = data.draw(st.integers(0, size - 1))
            box.append(slice(a, data.draw(st.integers(a + 1, size))))
        np.testing.assert_array_equal(read_cached(arr, box, "run", cache), DATA[tuple(box)])
        assert cache.used <= cache.budget


def test_neighbouring_reads_hit_the_cache(tmp_path_factory):
    arr = array(tmp_path_factory)
    cache = ChunkCache()
    read_cached(arr, [slice(5, 16), slice(6, 18), slice(7, 20)], "run", cache)
    misses = cache.misses
    read_cached(arr, [slice(6, 15), slice(7, 17), slice(8, 19)], "run", cache)
    assert cache.misses == misses and cache.hits > 0
    read_cached(arr, [slice(6, 15), slice(7, 17), slice(8, 19)], "another run", cache)
    assert cache.misses == 2 * misses
