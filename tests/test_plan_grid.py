"""A stage's tasks as a ChunkGrid: the same boxes as the rule applied chunk by chunk,
answers per axis that equal sums over tasks, and a plan of a million chunks in little memory.
"""

from __future__ import annotations

import pickle
import tracemalloc

import pytest
import zarr
from conftest import NUCLEI
from hypothesis import given, settings
from hypothesis import strategies as st

from engine import Pipeline
from engine.core.geometry import Roi, chain_boxes, chunks_touching, count_chunks
from engine.core.grid import ChunkGrid
from engine.io.metadata import Axis, read_image
from engine.io.ngff_write import LevelSpec, create_image
from engine.plan.compiler import compile_plan
from engine.plan.fingerprint import layout_hash
from engine.plan.memory import _task_bytes, project_stage
from engine.plan.report import summarize
from engine.plan.types import Link

SHAPE = (23, 30, 17)


def boxes(shape: tuple[int, ...]) -> st.SearchStrategy[Roi]:
    def box(pairs: list[tuple[int, int]]) -> Roi:
        return Roi(tuple(min(p) for p in pairs), tuple(max(p) for p in pairs))

    axes = [st.tuples(st.integers(0, n), st.integers(0, n)) for n in shape]
    return st.tuples(*axes).map(lambda pairs: box(list(pairs)))


def by_rule(grid: ChunkGrid) -> list[tuple]:
    """The tasks as the compiler made them before, one chunk at a time."""
    tasks = []
    for index, chunk in chunks_touching(grid.region, grid.chunks, grid.bounds):
        write = chunk.intersect(grid.region)
        seen = write.grow(grid.overlap).intersect(grid.region) if grid.overlap else write
        factors = grid.factors or (1,) * grid.ndim
        scaled = Roi(
            tuple(a * f for a, f in zip(seen.start, factors)),
            tuple(b * f for b, f in zip(seen.stop, factors)),
            grid.read_bounds.level,
        )
        halo = grid.halo or (0,) * grid.ndim  # as two links, clipped link by link
        links = [
            Link("a", "x", {}, tuple(h // 2 for h in halo), ""),
            Link("b", "x", {}, tuple(h - h // 2 for h in halo), ""),
        ]
        read = chain_boxes(scaled, links, grid.read_bounds)[0]
        tasks.append((index, read, write))
    return tasks


def hull(a: Roi, b: Roi) -> Roi:
    return Roi(tuple(map(min, a.start, b.start)), tuple(map(max, a.stop, b.stop)))


# reads are clipped to an array holding the region, as the compiler's always do
grids = st.tuples(boxes(SHAPE), boxes(SHAPE)).flatmap(
    lambda pair: st.builds(
        ChunkGrid,
        chunks=st.tuples(*(st.integers(1, 9) for _ in SHAPE)),
        bounds=st.just(Roi.from_shape(SHAPE)),
        region=st.just(pair[0]),
        read_bounds=st.just(hull(*pair)),
        halo=st.one_of(st.just(()), st.tuples(*(st.integers(0, 5) for _ in SHAPE))),
        overlap=st.one_of(st.just(()), st.tuples(*(st.integers(0, 4) for _ in SHAPE))),
    )
)


@settings(max_examples=200, deadline=None)
@given(grids)
def test_grid_gives_the_boxes_of_the_rule_chunk_by_chunk(grid: ChunkGrid) -> None:
    expected = by_rule(grid)
    assert [(t.index, t.read, t.write) for t in grid] == expected
    assert len(grid) == len(expected) == count_chunks(grid.region, grid.chunks, grid.bounds)
    for position, (index, read, write) in enumerate(expected):
        assert grid.position(index) == position
        assert grid[position].read == read and grid[position].write == write
    assert grid.position(tuple(r.stop for r in grid.ranges)) is None
    backwards = list(range(len(expected)))[::-1]
    assert [(t.index, t.read, t.write) for t in grid.tasks_at(backwards)] == expected[::-1]
    assert grid.volume("read") == sum(read.size for _, read, _ in expected)
    assert grid.volume("write") == sum(write.size for _, _, write in expected)
    bounds = Roi.from_shape(SHAPE)
    assert grid.volume("read", (4, 5, 6), bounds) == sum(
        count_chunks(read, (4, 5, 6), bounds) for _, read, _ in expected
    )
    assert pickle.loads(pickle.dumps(grid)) == grid


@settings(max_examples=100, deadline=None)
@given(grids, boxes(SHAPE))
def test_positions_and_touching_agree_with_the_boxes(grid: ChunkGrid, box: Roi) -> None:
    tasks = list(grid)
    touching = grid.touching(box)
    assert touching.tolist() == [not t.write.intersect(box).empty() for t in tasks]
    wanted = {index for index, _ in chunks_touching(box, grid.chunks, grid.bounds)}
    assert sorted(grid.positions_in(box).tolist()) == [
        p for p, t in enumerate(tasks) if t.index in wanted
    ]


@pytest.mark.parametrize("blocks", ["0", ""], ids=["per-chunk-labels", "label-block"])
def test_representatives_hold_the_largest_projected_task(tmp_path, monkeypatch, blocks) -> None:
    monkeypatch.setenv("NGFF_ENGINE_LABEL_BLOCK_VOXELS", blocks)  # "0": faces and relabel
    image = metadata_image(str(tmp_path / "m.zarr"), (40, 70, 90), (16, 16, 16))
    plan = compile_plan(NUCLEI, read_image(image), Roi((3, 0, 5), (40, 61, 90)))
    assert len(plan.stages) > (4 if blocks else 2)
    assert len(plan.stage("nuclei/label").tasks) == (1 if not blocks else 3 * 4 * 6)
    for stage in plan.stages:
        every = max((_task_bytes(stage, t.read, t.write) for t in stage.tasks), default=0)
        assert project_stage(stage).task_bytes == every, stage.name


def test_grid_of_a_million_chunks_is_small_and_quick() -> None:
    whole = Roi.from_shape((100, 400, 400))
    grid = ChunkGrid((1, 4, 4), whole, whole, whole, (1, 2, 2))
    assert len(grid) == 10**6
    assert len(pickle.dumps(grid)) < 20_000
    last = grid[-1]
    assert last.index == (99, 99, 99) and last.write == Roi((99, 396, 396), (100, 400, 400))
    assert last.read == Roi((98, 394, 394), (100, 400, 400))


def metadata_image(path: str, shape: tuple[int, ...], chunks: tuple[int, ...]) -> str:
    """An NGFF 0.5 image with metadata only (no chunk written)."""
    root = zarr.open_group(path, mode="w", zarr_format=3)
    axes = tuple(Axis(n, "space", "micrometer") for n in "zyx")
    levels = [LevelSpec("s0", shape, chunks, (1.0, 1.0, 1.0), (0, 0, 0))]
    create_image(root, "", version="0.5", axes=axes, levels=levels, dtype="uint16", name="m")
    return path


def test_compiling_a_plan_of_a_million_chunks_takes_little_memory(tmp_path) -> None:
    image = metadata_image(str(tmp_path / "m.zarr"), (100, 400, 400), (1, 4, 4))
    meta = read_image(image)
    pipeline = Pipeline().add(
        "copy", "function", "image", {"kind": "image", "name": "copy"}, function="numpy:asarray"
    )
    tracemalloc.start()
    try:
        plan = compile_plan(pipeline, meta, Roi((0, 0, 0), (100, 400, 400)))
        layout_hash(plan)
        rows = summarize(plan)
        project_stage(plan.stage("copy"))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert plan.stage("copy").tasks.shape == (100, 100, 100)
    assert rows[0]["tasks"] == rows[0]["chunks_written"] == 10**6
    assert rows[0]["bytes_written"] == 100 * 400 * 400 * 2
    assert peak < 50 * 2**20, f"{peak / 2**20:.1f} MiB"
