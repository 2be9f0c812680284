"""The chunk tasks of a stage as one small value: a chunk grid and the rule that gives
each chunk's boxes, instead of a tuple of a million boxes.

Every stage's tasks follow one rule: a task per chunk of a regular grid that touches the
stage's region; it writes the chunk's part inside the region, and reads that box grown by
an overlap (within the region), scaled by per-axis factors (a pyramid level reads the
finer level below it), grown by the halo of its chain and clipped to the array read. Per
axis, a chunk's boxes depend only on its index along that axis, so a task's boxes are the
product of per-axis intervals: a ChunkGrid computes any task from its position in C order
in O(axes), holds nothing per chunk, and pickles to a few hundred bytes whatever its size.
Whole-grid questions (bytes read, the distinct task shapes, Z order) are answered per axis.
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from engine.core.geometry import Roi, chunk_index_range


@dataclass(frozen=True)
class ChunkTask:
    index: tuple[int, ...]
    read: Roi
    write: Roi


@dataclass(frozen=True)
class AxisTiles:
    """One axis of a grid: per chunk along it, its index and the intervals written and read."""

    index: tuple[int, ...]
    write_start: tuple[int, ...]
    write_stop: tuple[int, ...]
    read_start: tuple[int, ...]
    read_stop: tuple[int, ...]


@dataclass(frozen=True)
class ChunkGrid(Sequence[ChunkTask]):
    """Tasks per chunk of `chunks` (origin 0, clipped to `bounds`) touching `region`.

    A task writes its chunk inside `region` and reads that box grown by `overlap` inside
    `region`, times `factors`, grown by `halo`, clipped to `read_bounds` (whose level is
    the level read). Empty tuples mean no overlap, factors 1 and no halo.
    """

    chunks: tuple[int, ...]
    bounds: Roi
    region: Roi
    read_bounds: Roi
    halo: tuple[int, ...] = ()
    overlap: tuple[int, ...] = ()
    factors: tuple[int, ...] = ()

    @classmethod
    def none(cls, chunks: Sequence[int], bounds: Roi) -> ChunkGrid:
        """A grid without tasks (a stage the driver does alone, e.g. a label merge)."""
        nothing = Roi(bounds.start, bounds.start, bounds.level)
        return cls(tuple(chunks), bounds, nothing, bounds)

    @property
    def ndim(self) -> int:
        return len(self.chunks)

    @functools.cached_property
    def ranges(self) -> tuple[range, ...]:
        """Per axis, the chunk indices of the tasks."""
        return chunk_index_range(self.region.intersect(self.bounds), self.chunks)

    @property
    def shape(self) -> tuple[int, ...]:
        """Tasks per axis."""
        return tuple(len(r) for r in self.ranges)

    def __len__(self) -> int:
        return math.prod(self.shape)

    @functools.cached_property
    def tiles(self) -> tuple[AxisTiles, ...]:
        """Per axis, the intervals of its chunks (computed once; a few ints per chunk row)."""
        return tuple(self._axis(a) for a in range(self.ndim))

    def _axis(self, a: int) -> AxisTiles:
        index = np.arange(self.ranges[a].start, self.ranges[a].stop, dtype=np.int64)
        c = self.chunks[a]
        lo = np.maximum(np.maximum(index * c, self.bounds.start[a]), self.region.start[a])
        hi = np.minimum(np.minimum((index + 1) * c, self.bounds.stop[a]), self.region.stop[a])
        hi = np.maximum(lo, hi)
        seen_lo, seen_hi = lo, hi
        if self.overlap:
            seen_lo = np.maximum(lo - self.overlap[a], self.region.start[a])
            seen_hi = np.maximum(seen_lo, np.minimum(hi + self.overlap[a], self.region.stop[a]))
        if self.factors:
            seen_lo, seen_hi = seen_lo * self.factors[a], seen_hi * self.factors[a]
        halo = self.halo[a] if self.halo else 0
        read_lo = np.maximum(seen_lo - halo, self.read_bounds.start[a])
        read_hi = np.maximum(read_lo, np.minimum(seen_hi + halo, self.read_bounds.stop[a]))
        return AxisTiles(
            *(tuple(v.tolist()) for v in (index, lo, hi, read_lo, read_hi))  # python ints
        )

    def task_at(self, positions: Sequence[int]) -> ChunkTask:
        """The task at per-axis positions (0 = the first chunk along each axis)."""
        tiles = self.tiles
        return ChunkTask(
            tuple(t.index[p] for t, p in zip(tiles, positions, strict=True)),
            Roi(
                tuple(t.read_start[p] for t, p in zip(tiles, positions, strict=True)),
                tuple(t.read_stop[p] for t, p in zip(tiles, positions, strict=True)),
                self.read_bounds.level,
            ),
            Roi(
                tuple(t.write_start[p] for t, p in zip(tiles, positions, strict=True)),
                tuple(t.write_stop[p] for t, p in zip(tiles, positions, strict=True)),
                self.bounds.level,
            ),
        )

    def __getitem__(self, key: int | slice) -> Any:  # a task; a list of tasks for a slice
        if isinstance(key, slice):
            return [self[i] for i in range(*key.indices(len(self)))]
        n = len(self)
        if not -n <= key < n:
            raise IndexError(f"task {key} of a grid of {n}")
        return self.task_at(np.unravel_index(key % n, self.shape))

    def tasks_at(self, positions: np.ndarray) -> list[ChunkTask]:
        """The tasks at `positions` (C order), unravelled at once."""
        per_axis = np.unravel_index(np.asarray(positions, np.int64), self.shape)
        return [self.task_at(p) for p in zip(*(a.tolist() for a in per_axis), strict=True)]

    def __iter__(self) -> Iterator[ChunkTask]:
        for positions in itertools.product(*(range(n) for n in self.shape)):
            yield self.task_at(positions)

    def position(self, index: Sequence[int]) -> int | None:
        """Where the task of chunk `index` is in C order; None if the grid has none."""
        if len(self) == 0 or any(i not in r for i, r in zip(index, self.ranges, strict=True)):
            return None
        offsets = [int(i) - r.start for i, r in zip(index, self.ranges, strict=True)]
        return int(np.ravel_multi_index(offsets, self.shape))

    def positions_in(self, box: Roi) -> np.ndarray:
        """Positions of the tasks whose chunks touch `box` (a box at the grid's level)."""
        spans = []
        for r, wanted in zip(self.ranges, chunk_index_range(box, self.chunks), strict=True):
            first, stop = max(wanted.start, r.start), min(wanted.stop, r.stop)
            if stop <= first:
                return np.zeros(0, np.int64)
            spans.append(np.arange(first - r.start, stop - r.start))
        return np.ravel_multi_index(np.ix_(*spans), self.shape).ravel()

    def hull(self, positions: np.ndarray) -> tuple[Roi, Roi]:
        """The smallest boxes around what the tasks at `positions` read, and write. Along
        an axis, starts and stops grow with the chunk index: the extremes are at the
        first and last chunk the tasks have on it."""
        first, last = [], []
        for p in np.unravel_index(np.asarray(positions), self.shape):
            first.append(int(p.min()))
            last.append(int(p.max()))
        tiles = list(zip(self.tiles, first, last, strict=True))
        return (
            Roi(
                tuple(t.read_start[a] for t, a, _ in tiles),
                tuple(t.read_stop[b] for t, _, b in tiles),
                self.read_bounds.level,
            ),
            Roi(
                tuple(t.write_start[a] for t, a, _ in tiles),
                tuple(t.write_stop[b] for t, _, b in tiles),
                self.bounds.level,
            ),
        )

    def touching(self, box: Roi) -> np.ndarray:
        """Per task in C order: does the box it writes meet `box`?"""
        if box.empty():
            return np.zeros(len(self), bool)
        masks = [
            (np.asarray(t.write_start) < box.stop[a]) & (np.asarray(t.write_stop) > box.start[a])
            for a, t in enumerate(self.tiles)
        ]
        return functools.reduce(np.logical_and.outer, masks).ravel()

    def volume(
        self, box: str, chunks: Sequence[int] | None = None, bounds: Roi | None = None
    ) -> int:
        """Summed over the tasks: the voxels of the boxes they `box` ("read" or "write");
        with `chunks` and `bounds`, the chunks of that grid (origin 0, clipped to `bounds`)
        those boxes touch instead. A sum over a product grid of products of per-axis
        terms: the product of the per-axis sums."""
        total = 1
        for a, t in enumerate(self.tiles):
            starts, stops = (
                (t.read_start, t.read_stop) if box == "read" else (t.write_start, t.write_stop)
            )
            if chunks is None or bounds is None:
                total *= sum(b - s for s, b in zip(starts, stops, strict=True))
                continue
            lo, hi, c = int(bounds.start[a]), int(bounds.stop[a]), chunks[a]
            total *= sum(
                -(-min(b, hi) // c) - max(s, lo) // c if min(b, hi) > max(s, lo) else 0
                for s, b in zip(starts, stops, strict=True)
            )
        return total

    def representatives(self, bounds: Roi, reach: Sequence[int]) -> Iterator[ChunkTask]:
        """One task per distinct shape: every task has, on every axis, the same extents
        written and read, and the same room (up to `reach`) to `bounds` on both sides as
        one of these. What depends only on those (a task's projected memory through its
        chain) has its maximum among them."""
        firsts = []
        for a in range(self.ndim):
            t = self.tiles[a]
            seen: dict[tuple[int, ...], int] = {}
            for p in range(len(t.index)):
                key = (
                    t.write_stop[p] - t.write_start[p],
                    t.read_stop[p] - t.read_start[p],
                    min(t.write_start[p] - int(bounds.start[a]), reach[a]),
                    min(int(bounds.stop[a]) - t.write_stop[p], reach[a]),
                )
                seen.setdefault(key, p)
            firsts.append(sorted(seen.values()))
        for positions in itertools.product(*firsts):
            yield self.task_at(positions)
