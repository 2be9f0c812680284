"""A small per-process cache of decoded chunks of the input image.

A chunk task reads its chunk plus a halo, which touches up to 3**ndim stored chunks,
each decoded in full to yield a thin sliver. Neighbouring tasks on the same worker
read the same neighbours again. Keeping the last few decoded chunks (a fixed budget,
independent of the image size) turns that repeated decoding into copies.

Only the input image is cached: it never changes during a run. Keys carry the run's
scratch path, so a later run never sees another run's chunks.
"""

from __future__ import annotations

import itertools
from collections import OrderedDict
from collections.abc import Hashable, Sequence

import numpy as np
import zarr

from engine.core import cpu
from engine.io.chunk_files import ChunkFiles

DEFAULT_BUDGET_BYTES = 256 * 1024**2


class ChunkCache:
    def __init__(self, budget_bytes: int = DEFAULT_BUDGET_BYTES) -> None:
        self.budget = budget_bytes
        self.used = 0
        self.hits = 0
        self.misses = 0
        self._items: OrderedDict[Hashable, np.ndarray] = OrderedDict()

    def get(self, key: Hashable, load) -> np.ndarray:
        if key in self._items:
            self._items.move_to_end(key)
            self.hits += 1
            return self._items[key]
        self.misses += 1
        value = load()
        if value.nbytes <= self.budget:
            self._items[key] = value
            self.used += value.nbytes
            while self.used > self.budget:
                _, old = self._items.popitem(last=False)
                self.used -= old.nbytes
        return value


CACHE = ChunkCache()


def read_cached(
    array: zarr.Array,
    selection: Sequence[slice],
    run_key: Hashable,
    cache: ChunkCache = CACHE,
    files: ChunkFiles | None = None,
) -> np.ndarray:
    """`array[selection]` (slices with steps of 1), assembled from whole cached chunks,
    read from `files` (engine/io/chunk_files.py) when given, else through zarr. Its CPU
    time, copies from the cache included, counts as decoding (engine/core/cpu.py)."""
    before = cpu.switch(cpu.DECODE)
    try:
        return _read_cached(array, selection, run_key, cache, files)
    finally:
        cpu.switch(before)


def _read_cached(
    array: zarr.Array,
    selection: Sequence[slice],
    run_key: Hashable,
    cache: ChunkCache,
    files: ChunkFiles | None,
) -> np.ndarray:
    chunks = array.chunks
    start = [s.start for s in selection]
    stop = [s.stop for s in selection]
    out = np.empty([b - a for a, b in zip(start, stop, strict=True)], dtype=array.dtype)
    ranges = [range(a // c, -(-b // c)) for a, b, c in zip(start, stop, chunks, strict=True)]
    for index in itertools.product(*ranges):
        lo = [i * c for i, c in zip(index, chunks, strict=True)]
        hi = [min(a + c, s) for a, c, s in zip(lo, chunks, array.shape, strict=True)]
        box = tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))
        block = cache.get(
            (run_key, array.path, index),
            lambda index=index, box=box: (
                np.asarray(array[box])
                if files is None
                else files.read(index)[tuple(slice(0, b.stop - b.start) for b in box)]
            ),
        )
        src = tuple(
            slice(max(a, s) - a, min(b, e) - a)
            for a, b, s, e in zip(lo, hi, start, stop, strict=True)
        )
        dst = tuple(
            slice(max(a, s) - s, min(b, e) - s)
            for a, b, s, e in zip(lo, hi, start, stop, strict=True)
        )
        out[dst] = block[src]
    return out
