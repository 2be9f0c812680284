"""Batches of chunk tasks (Z order, whole shards, priority first) and the per-batch done
markers (a record per chunk, a torn last record ignored), without a cluster."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.core.geometry import Roi
from engine.core.grid import ChunkGrid
from engine.execute.batching import batch, morton_keys
from engine.state.markers import ChunkMarker, read_records


def morton_key(index: tuple[int, ...]) -> int:
    """Z order of one chunk index, bit by bit."""
    key = 0
    for bit in range(max(int(i).bit_length() for i in index)):
        for axis, i in enumerate(index):
            key |= ((i >> bit) & 1) << (bit * len(index) + axis)
    return key


def grid(shape: tuple[int, ...], chunks: tuple[int, ...], region: Roi | None = None) -> ChunkGrid:
    whole = Roi.from_shape(shape)
    return ChunkGrid(chunks, whole, region or whole, whole)


def test_morton_keys_of_a_grid_are_those_of_each_index() -> None:
    g = grid((40, 24, 72), (4, 4, 4), Roi((8, 0, 12), (40, 21, 72)))
    keys = morton_keys([np.asarray(t.index) for t in g.tiles])
    assert keys.tolist() == [morton_key(t.index) for t in g]


@settings(max_examples=60, deadline=None)
@given(
    st.integers(1, 70),
    st.lists(st.booleans(), min_size=6 * 8 * 8, max_size=6 * 8 * 8),
    st.sampled_from([(), (2, 4, 2), (6, 8, 8)]),
    st.one_of(st.none(), st.tuples(*[st.integers(0, 7)] * 3)),
)
def test_batches_hold_each_task_once_shards_whole_priority_first(
    size: int, skip: list[bool], shards: tuple[int, ...], corner: tuple[int, ...] | None
) -> None:
    g = grid((6, 8, 8), (1, 1, 1))
    todo = np.flatnonzero(~np.asarray(skip))
    box = Roi(corner, tuple(c + 2 for c in corner)) if corner else None
    priority = g.touching(box) if box else None
    batches = batch(g, todo, size, shards, priority)
    members = [batches.members(k).tolist() for k in range(len(batches))]
    assert sorted(p for m in members for p in m) == todo.tolist()
    assert all(members)
    shard_of = {}
    for k, m in enumerate(members):
        if not shards:
            assert len(m) == size or k in (batches.preview - 1, len(batches) - 1)
        keys = [morton_key(g[p].index) for p in m]
        assert keys == sorted(keys) or shards
        for p in m if shards else ():
            shard = tuple(i // s for i, s in zip(g[p].index, shards))
            assert shard_of.setdefault(shard, k) == k  # a shard is in one batch
    marked = [k for k, m in enumerate(members) if priority is not None and priority[m].any()]
    assert marked == list(range(batches.preview))


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 300), st.integers(1, 70), st.integers(1, 4), st.booleans())
def test_batches_shrink_towards_the_end_of_a_stage(
    count: int, size: int, workers: int, sharded: bool
) -> None:
    """With the workers given, no batch holds more than the tasks left (itself
    included) over twice the workers, or a whole shard: the stage ends in batches of
    one task (or shard), spread over the workers."""
    g = grid((count,), (1,))
    shards = (3,) if sharded else ()
    batches = batch(g, np.arange(count), size, shards, None, workers)
    sizes = [len(batches.members(k)) for k in range(len(batches))]
    assert sum(sizes) == count and sorted(
        np.concatenate([batches.members(k) for k in range(len(batches))]).tolist()
    ) == list(range(count))
    left = count
    unit = 3 if sharded else 1
    for n in sizes:
        assert n <= max(unit, min(size, -(-left // (2 * workers))) + unit - 1)
        left -= n
    assert sizes[-1] <= unit


def test_records_are_read_whole_and_a_torn_last_one_is_ignored(tmp_path: Path) -> None:
    (tmp_path / "markers").mkdir()
    for first in (0, 64):
        marker = ChunkMarker(str(tmp_path), {"path": "markers", "keep": True})
        for position in range(first, first + 64):
            marker.mark(position, {"sum": position})
        marker.close()
    assert len(list((tmp_path / "markers").iterdir())) == 2  # one per batch, not per chunk
    with open(marker.path, "r+b") as f:  # the last record cut short, as by a SIGKILL
        f.truncate(os.path.getsize(marker.path) - 3)
    done = read_records(tmp_path / "markers", keep=True)
    assert done.positions.tolist() == list(range(127))
    assert done.results[126] == {"sum": 126}
    assert read_records(tmp_path / "markers").results[5] is None  # results not kept
    (tmp_path / "markers" / "other.done").write_bytes(b"130 0\n13")  # a header cut short
    assert read_records(tmp_path / "markers").positions.tolist() == [*range(127), 130]
