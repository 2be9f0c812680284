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


def test_a_run_leaves_no_chunks_in_the_cache(tmp_path, monkeypatch):
    """Once no stage reads the image again (after the first, here), the run's decoded
    chunks leave the process's cache (a warm worker kept them until other runs pushed
    them out); a second run through the same process still reads, and frees, its own."""
    from conftest import blobs, nuclei_config, write_image

    from engine import Pipeline, run
    from engine.execute import executor
    from engine.io.chunk_cache import CACHE

    monkeypatch.delenv("NGFF_ENGINE_IN_PROCESS_MAX")  # on threads of this process
    image = write_image(tmp_path / "i.zarr", blobs((16, 64, 64), seed=1), (8, 32, 32), "0.5")
    pipeline = Pipeline.from_yaml(nuclei_config(tmp_path))
    held: dict[str, int] = {}
    complete = executor.Executor._complete

    def spy(self, stage_run):
        complete(self, stage_run)
        held[stage_run.stage.name] = CACHE.used

    executor.Executor._complete = spy
    try:
        for _ in range(2):
            misses = CACHE.misses
            run(pipeline, input=image, overwrite=True, warm=False, workers=2)
            assert CACHE.misses > misses  # the image was read through the cache
            assert held == {name: 0 for name in held} and "mask/reduce-0" in held
            assert CACHE.used == 0
    finally:
        executor.Executor._complete = complete
