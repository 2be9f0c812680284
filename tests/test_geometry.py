from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.core.geometry import Roi, chunks_touching, count_chunks


def boxes(ndim: int = 3, lo: int = -50, hi: int = 200):
    def make(pairs):
        return Roi(tuple(min(p) for p in pairs), tuple(max(p) for p in pairs), 0)

    pair = st.tuples(st.integers(lo, hi), st.integers(lo, hi))
    return st.lists(pair, min_size=ndim, max_size=ndim).map(make)


def test_basic_operations():
    a = Roi((0, 10), (10, 30))
    b = Roi((5, 0), (20, 15))
    assert a.intersect(b) == Roi((5, 10), (10, 15))
    assert a.shape == (10, 20) and a.size == 200 and not a.empty()
    assert Roi((0, 5), (10, 5)).empty()
    assert a.grow((1, 2)) == Roi((-1, 8), (11, 32))
    assert a.grow((1, 2), (0, 0)) == Roi((-1, 8), (10, 30))
    assert Roi((3, 13), (17, 29)).snap((8, 8)) == Roi((0, 8), (24, 32))
    assert a.clip(Roi((0, 0), (5, 100))) == Roi((0, 10), (5, 30))
    assert Roi((2, 12), (4, 20)).relative_to(a) == (slice(2, 4), slice(2, 10))
    with pytest.raises(ValueError):
        a.intersect(Roi((0, 0), (1, 1), level=1))


@given(boxes(), boxes())
def test_intersection_is_contained_in_both(a, b):
    c = a.intersect(b)
    if not c.empty():
        assert a.contains(c) and b.contains(c)
    assert c.size <= min(a.size, b.size)


@given(boxes(), st.lists(st.integers(1, 40), min_size=3, max_size=3))
def test_snap_contains_and_is_aligned(a, grid):
    snapped = a.snap(grid)
    assert snapped.contains(a)
    assert all(s % g == 0 for s, g in zip(snapped.start + snapped.stop, grid * 2))


@given(
    boxes(lo=0, hi=120),
    st.lists(st.floats(0.1, 10), min_size=3, max_size=3),
    st.lists(st.floats(-100, 100), min_size=3, max_size=3),
)
def test_index_physical_round_trip_is_exact(a, scale, translation):
    physical = a.to_physical(scale, translation)
    assert physical.is_physical
    assert physical.to_index(0, scale, translation) == a


@settings(deadline=None)  # up to 27,000 chunks of 2^3 in one example: seconds on a busy machine
@given(
    boxes(lo=0, hi=60),
    st.lists(st.integers(2, 17), min_size=3, max_size=3),
)
def test_chunks_touching_tile_the_box_exactly(a, chunks):
    bounds = Roi((0, 0, 0), (60, 60, 60))
    region = a.intersect(bounds)
    found = list(chunks_touching(region, chunks, bounds))
    assert len(found) == count_chunks(region, chunks, bounds)
    hits = np.zeros(bounds.shape, dtype=np.int32)
    for index, box in found:
        assert all(s == i * c for s, i, c in zip(box.start, index, chunks))
        hits[box.intersect(region).to_slices()] += 1
    assert (hits[region.to_slices()] == 1).all()
    assert hits.sum() == region.size
