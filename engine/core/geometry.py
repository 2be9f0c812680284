"""Boxes in index and physical space.

A `Roi` is a half-open, axis-aligned box. In index space (``level`` set) its
bounds are integers on that level's voxel grid; in physical space (``level``
is None) they are floats in the axes' units. Everything here is plain data:
no I/O, no dask, so the compiler can be tested and reasoned about alone.

Conversion convention: voxel ``i`` of a level sits at physical position
``translation + i * scale``; a physical box ``[p0, p1)`` holds the voxels
whose positions fall inside it. Index -> physical -> index is therefore exact.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

Number = int | float


@dataclass(frozen=True)
class Roi:
    start: tuple[Number, ...]
    stop: tuple[Number, ...]
    level: int | None = 0

    def __post_init__(self) -> None:
        if len(self.start) != len(self.stop):
            raise ValueError(f"Roi start {self.start} and stop {self.stop} differ in length")
        object.__setattr__(self, "start", tuple(self.start))
        object.__setattr__(self, "stop", tuple(self.stop))

    @classmethod
    def from_shape(cls, shape: Sequence[int], level: int | None = 0) -> Roi:
        return cls(tuple(0 for _ in shape), tuple(int(s) for s in shape), level)

    @property
    def ndim(self) -> int:
        return len(self.start)

    @property
    def shape(self) -> tuple[Number, ...]:
        return tuple(max(0, b - a) for a, b in zip(self.start, self.stop, strict=True))

    @property
    def size(self) -> int:
        return math.prod(self.shape)

    @property
    def is_physical(self) -> bool:
        return self.level is None

    def empty(self) -> bool:
        return any(b <= a for a, b in zip(self.start, self.stop, strict=True))

    def _check_same_space(self, other: Roi) -> None:
        if other.level != self.level or other.ndim != self.ndim:
            raise ValueError(f"cannot combine {self} with {other}: different space")

    def intersect(self, other: Roi) -> Roi:
        self._check_same_space(other)
        start = tuple(max(a, b) for a, b in zip(self.start, other.start, strict=True))
        stop = tuple(min(a, b) for a, b in zip(self.stop, other.stop, strict=True))
        stop = tuple(max(a, b) for a, b in zip(start, stop, strict=True))
        return Roi(start, stop, self.level)

    def contains(self, other: Roi) -> bool:
        self._check_same_space(other)
        return all(
            a <= c and d <= b
            for a, b, c, d in zip(self.start, self.stop, other.start, other.stop, strict=True)
        )

    def grow(self, lower: Sequence[Number], upper: Sequence[Number] | None = None) -> Roi:
        """Widen by a halo: ``lower`` before and ``upper`` (default ``lower``) after."""
        upper = lower if upper is None else upper
        return Roi(
            tuple(a - h for a, h in zip(self.start, lower, strict=True)),
            tuple(b + h for b, h in zip(self.stop, upper, strict=True)),
            self.level,
        )

    def shift(self, offset: Sequence[Number]) -> Roi:
        return Roi(
            tuple(a + o for a, o in zip(self.start, offset, strict=True)),
            tuple(b + o for b, o in zip(self.stop, offset, strict=True)),
            self.level,
        )

    def clip(self, bounds: Roi) -> Roi:
        return self.intersect(bounds)

    def snap(self, grid: Sequence[int]) -> Roi:
        """Grow outwards to the nearest multiples of ``grid`` (chunk or shard sizes)."""
        return Roi(
            tuple((a // g) * g for a, g in zip(self.start, grid, strict=True)),
            tuple(-(-b // g) * g for b, g in zip(self.stop, grid, strict=True)),
            self.level,
        )

    def relative_to(self, outer: Roi) -> tuple[slice, ...]:
        """Slices that cut this box out of an array that covers ``outer``."""
        self._check_same_space(outer)
        return tuple(
            slice(int(a - o), int(b - o))
            for a, b, o in zip(self.start, self.stop, outer.start, strict=True)
        )

    def to_slices(self) -> tuple[slice, ...]:
        return tuple(slice(int(a), int(b)) for a, b in zip(self.start, self.stop, strict=True))

    def to_physical(self, scale: Sequence[float], translation: Sequence[float]) -> Roi:
        if self.is_physical:
            return self
        return Roi(
            tuple(t + a * s for a, s, t in zip(self.start, scale, translation, strict=True)),
            tuple(t + b * s for b, s, t in zip(self.stop, scale, translation, strict=True)),
            None,
        )

    def to_index(self, level: int, scale: Sequence[float], translation: Sequence[float]) -> Roi:
        """Voxels of ``level`` whose positions lie in this physical box."""
        if not self.is_physical:
            raise ValueError("to_index needs a physical Roi; use to_physical first")
        return Roi(
            tuple(
                _ceil_tolerant((a - t) / s)
                for a, s, t in zip(self.start, scale, translation, strict=True)
            ),
            tuple(
                _ceil_tolerant((b - t) / s)
                for b, s, t in zip(self.stop, scale, translation, strict=True)
            ),
            level,
        )

    def drop_axis(self, axis: int | None) -> Roi:
        """This box without axis `axis` (None: unchanged): an image ROI in the work space,
        which has no channel axis."""
        if axis is None:
            return self
        keep = [i for i in range(self.ndim) if i != axis]
        return Roi(
            tuple(self.start[i] for i in keep), tuple(self.stop[i] for i in keep), self.level
        )

    def to_json(self) -> dict[str, Any]:
        """The form run records, output provenance and results keep an ROI in."""
        return {
            "start": [int(v) for v in self.start],
            "stop": [int(v) for v in self.stop],
            "level": self.level,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Roi:
        return cls(tuple(data["start"]), tuple(data["stop"]), data["level"])

    def __str__(self) -> str:
        space = "physical" if self.is_physical else f"level {self.level}"
        ranges = ", ".join(f"{a}:{b}" for a, b in zip(self.start, self.stop, strict=True))
        return f"[{ranges}] ({space})"


def _ceil_tolerant(value: float, eps: float = 1e-9) -> int:
    """Ceil that forgives float error, so 2.0000000001 voxels is 2, not 3."""
    nearest = round(value)
    if abs(value - nearest) < eps * max(1.0, abs(value)):
        return int(nearest)
    return math.ceil(value)


def chunk_index_range(roi: Roi, chunks: Sequence[int]) -> tuple[range, ...]:
    """Per axis, the chunk indices a box touches."""
    return tuple(
        range(int(a) // c, -(-int(b) // c)) if b > a else range(0)
        for a, b, c in zip(roi.start, roi.stop, chunks, strict=True)
    )


def chunk_roi(index: Sequence[int], chunks: Sequence[int], bounds: Roi) -> Roi:
    """The box of chunk ``index``, clipped to the array bounds."""
    start = tuple(i * c for i, c in zip(index, chunks, strict=True))
    stop = tuple(s + c for s, c in zip(start, chunks, strict=True))
    return Roi(start, stop, bounds.level).intersect(bounds)


def chunks_touching(
    roi: Roi, chunks: Sequence[int], bounds: Roi
) -> Iterator[tuple[tuple[int, ...], Roi]]:
    """Chunk indices and chunk boxes that a box touches, in C order.

    Cost is proportional to the number of chunks touched, not the array size.
    """
    for index in itertools.product(*chunk_index_range(roi.intersect(bounds), chunks)):
        yield index, chunk_roi(index, chunks, bounds)


def count_chunks(roi: Roi, chunks: Sequence[int], bounds: Roi) -> int:
    return math.prod(len(r) for r in chunk_index_range(roi.intersect(bounds), chunks))


def chain_boxes(write: Roi, chain: Sequence[Any], bounds: Roi) -> list[Roi]:
    """Boxes each link's input must cover, first link first; the last entry is `write`
    (a link is anything with a per-axis `halo`, as the plan's `Link`).

    Going backwards from the box written, each link widens the box by its halo,
    clipped to the data's extent, where boundary modes then apply as on the whole.
    """
    boxes = [write]
    for link in reversed(chain):
        boxes.append(boxes[-1].grow(link.halo).intersect(bounds))
    return boxes[::-1]
