"""Chunk tasks grouped into batches, the unit the executor hands to dask.

Batches follow Z order (neighbouring chunks together, so a batch shares its neighbours'
decoded chunks instead of a thin row of them); tasks writing one shard of a sharded
output share a batch (a shard is one file: two tasks writing it at once would lose
chunks); batches of the tasks in the priority box come first. All of it is computed with
numpy over the grid: a batching holds a few bytes per task, not a Python object each.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from engine.core.grid import ChunkGrid

BATCHES_PER_WORKER = 4  # batches per worker and stage, when chunks are many enough
MAX_BATCH = 64  # chunks per batch: bounds what one dask task ships, holds and redoes


@dataclass(frozen=True, eq=False)
class Batches:
    """Batch k holds the tasks at positions `order[cuts[k]:cuts[k + 1]]` of the grid;
    the first `preview` batches hold the tasks that write into the priority box."""

    order: np.ndarray
    cuts: np.ndarray
    preview: int = 0

    def __len__(self) -> int:
        return len(self.cuts) - 1

    def members(self, k: int) -> np.ndarray:
        return self.order[self.cuts[k] : self.cuts[k + 1]]

    def owners(self, count: int) -> np.ndarray:
        """Per task of a grid of `count`: the batch computing it (-1: none, done before)."""
        owner = np.full(count, -1, np.int32 if len(self) < 2**31 else np.int64)
        owner[self.order] = np.repeat(np.arange(len(self), dtype=owner.dtype), np.diff(self.cuts))
        return owner


def morton_keys(coordinates: Sequence[np.ndarray]) -> np.ndarray:
    """Z-order keys of a product grid, in C order, from each axis's coordinates: bit b of
    axis a's coordinate goes to bit b * ndim + a of the key."""
    ndim = len(coordinates)
    spread = []
    for axis, values in enumerate(coordinates):
        values = np.asarray(values, dtype=np.uint64)
        key = np.zeros(len(values), np.uint64)
        for bit in range(int(values.max(initial=0)).bit_length()):
            key |= ((values >> np.uint64(bit)) & np.uint64(1)) << np.uint64(bit * ndim + axis)
        spread.append(key)
    return functools.reduce(np.bitwise_or.outer, spread).ravel()


def batch_size(tasks: int, workers: int, asked: int | None = None) -> int:
    """Chunks per batch for a stage of `tasks` to do: `asked` (a model's batch size), or
    enough batches for every worker to have a few, each at most MAX_BATCH."""
    return asked or min(MAX_BATCH, max(1, math.ceil(tasks / (workers * BATCHES_PER_WORKER))))


def batch(
    grid: ChunkGrid,
    todo: np.ndarray,
    size: int,
    shards: Sequence[int] = (),
    priority: np.ndarray | None = None,
    workers: int = 0,
) -> Batches:
    """The tasks at positions `todo` in batches of about `size` (whole shards when
    `shards` is set), in Z order; with `priority` (a mask over the grid's tasks), the
    batches holding tasks it marks first; with `workers`, batches shrink towards the end
    (`_pack`)."""
    index_keys = morton_keys([np.asarray(t.index) for t in grid.tiles])[todo]
    if shards:
        shard_keys = morton_keys(
            [np.asarray(t.write_start) // s for t, s in zip(grid.tiles, shards, strict=True)]
        )[todo]
        ranked = np.lexsort((index_keys, shard_keys))
        shard_keys = shard_keys[ranked]
        starts = np.flatnonzero(np.r_[True, shard_keys[1:] != shard_keys[:-1]])
    else:
        ranked = np.argsort(index_keys, kind="stable")
        starts = np.arange(len(todo))
    order = todo[ranked]
    first = np.zeros(len(starts), bool)
    if priority is not None and len(order):
        first = np.logical_or.reduceat(priority[order], starts)
    sizes = np.diff(np.r_[starts, len(order)])
    later = ~first  # units stay whole, in order: first those in the priority box
    ordered = order[np.argsort(np.repeat(later, sizes), kind="stable")]
    head = _pack(sizes[first], size, workers)
    tail = _pack(sizes[later], size, workers)
    cuts = np.r_[head, head[-1] + tail[1:]].astype(np.int64)
    return Batches(ordered, cuts, len(head) - 1)


def _pack(sizes: np.ndarray, size: int, workers: int = 0) -> np.ndarray:
    """Batch edges over units of `sizes` tasks, in order: units join a batch until it
    holds `size` tasks or more. No units: one edge, 0.

    With `workers`, a batch holds at most the tasks still to come over twice the
    workers (guided self-scheduling), so a stage ends with batches of one task spread
    over the workers instead of one batch of `size` keeping one worker busy while the
    others wait at the barrier after it (a reduction, the label merge). In the time
    series workload (32 tasks of about 75 ms per stage, 2 workers), 8 batches of 4 tasks
    became 12 of 4, 4, 4, 4, 4, 3, 3, 2, 1, 1, 1, 1."""
    total = int(sizes.sum())

    def cap(start: int) -> int:
        return min(size, max(1, -(-(total - start) // (2 * workers)))) if workers else size

    if (sizes == 1).all():
        if not workers:
            return np.r_[np.arange(0, total, size), total]
        edges = [0]
        while edges[-1] < total:  # one step per batch, not per task
            edges.append(edges[-1] + cap(edges[-1]))
        return np.asarray(edges, np.int64)
    edges, held = [0], 0
    for n in sizes.tolist():
        held += n
        if held - edges[-1] >= cap(edges[-1]):
            edges.append(held)
    if edges[-1] != total:
        edges.append(total)
    return np.asarray(edges, np.int64)
