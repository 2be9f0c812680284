"""A small per-process cache of decoded chunks of the input image.

A chunk task reads its chunk plus a halo, which touches up to 3**ndim stored chunks,
each decoded in full to yield a thin sliver. Neighbouring tasks on the same worker
read the same neighbours again. Keeping the last few decoded chunks (a fixed budget,
independent of the image size) turns that repeated decoding into copies.

Only the input image is cached: it never changes during a run. Keys carry the run's
scratch path, so a later run never sees another run's chunks.

A remote image (HTTP, S3) is read chunk by chunk too, but the chunks a box misses are
fetched concurrently (a bounded thread pool; each fetch is one GET through zarr's
store), since a remote read waits on the server, not the CPU. Measured with
benchmarks/bench_remote.py's `halo_reads` (27 chunks of 32x64x64 uint16, the read box
of one task) on the local moto S3 server, on a 2-core machine loaded by other jobs
(load average about 20): 0.37 to 0.41 s one by one, 0.17 to 0.33 s with 8 in flight in
one measurement, 0.42 against 0.55 s in another (32x128x128 chunks: the server, not the
wait, was the limit there); from the local http.server 0.04 to 0.06 s either way. A real
object store serves many requests at once, each with a longer wait: that is the case
the pool is for.
"""

from __future__ import annotations

import functools
import itertools
from collections import OrderedDict
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import zarr

from engine.core import cpu
from engine.io.chunk_files import ChunkFiles

DEFAULT_BUDGET_BYTES = 256 * 1024**2
REMOTE_FETCHES = 8  # chunks of a remote image fetched at once by one task


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
        self.put(key, value)
        return value

    def put(self, key: Hashable, value: np.ndarray) -> None:
        if key in self._items:
            return
        if value.nbytes <= self.budget:
            self._items[key] = value
            self.used += value.nbytes
            while self.used > self.budget:
                _, old = self._items.popitem(last=False)
                self.used -= old.nbytes

    def drop(self, run_key: Hashable) -> None:
        """Forget a run's chunks (keys are (run_key, path, index))."""
        for key in [k for k in self._items if k[0] == run_key]:
            self.used -= self._items.pop(key).nbytes

    def prefetch(
        self, loads: dict[Hashable, Callable[[], np.ndarray]], workers: int = REMOTE_FETCHES
    ) -> None:
        """Load the missing keys of `loads` concurrently, into the cache."""
        missing = [key for key in loads if key not in self._items]
        if len(missing) < 2:
            return
        with ThreadPoolExecutor(min(workers, len(missing))) as pool:
            values = list(pool.map(lambda key: loads[key](), missing))
        for key, value in zip(missing, values, strict=True):
            self.put(key, value)


CACHE = ChunkCache()


def drop_cached(run_key: Hashable) -> None:
    """Free this process's cached chunks of a run once no stage of it reads them again
    (engine/execute/executor.py): a warm worker, or the command's own threads, kept them
    until later runs pushed them out, up to the whole budget (256 MiB) per process; the
    4x64x512x512 time series left its 128 MiB of input there for its label stages."""
    CACHE.drop(run_key)


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
    if files is None and not _is_local(array):
        cache.prefetch(
            {
                (run_key, array.path, index): functools.partial(
                    _fetch, array, _chunk_box(index, chunks, array.shape)
                )
                for index in itertools.product(*ranges)
            }
        )
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


def _is_local(array: zarr.Array) -> bool:
    from zarr.storage import LocalStore

    return isinstance(array.store_path.store, LocalStore)


def _chunk_box(index: tuple[int, ...], chunks, shape) -> tuple[slice, ...]:
    return tuple(
        slice(i * c, min((i + 1) * c, s)) for i, c, s in zip(index, chunks, shape, strict=True)
    )


def _fetch(array: zarr.Array, box: tuple[slice, ...]) -> np.ndarray:
    return np.asarray(array[box])
