"""Import tasks that write the first pyramid levels from the s0 block they hold (fused
levels, engine/plan/importing.py): the plan's choice of block and levels, the levels
equal the engine's own downsampling (odd sizes, z halved too, shards, plane series),
and chunk-file writes of many-chunk boxes equal zarr's."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import tifffile
import zarr

from engine import import_image
from engine.core.geometry import Roi
from engine.io.arrays import write_chunks
from engine.io.downsample import block_mean
from engine.io.ngff_write import fast_compressor
from engine.io.sources import SourceInfo, SourceSpec
from engine.plan.importing import (
    FUSED_BUDGET_BYTES,
    compile_import,
    fused_levels,
    import_levels,
)
from tests.test_import import check_image, data


def plan_for(shape: tuple[int, ...], chunks: tuple[int, ...], levels: int, shards=None):
    info = SourceInfo("p.tif", shape, "uint16", "zyx", {"z": 4.0, "y": 1.0, "x": 1.0})
    specs = import_levels(info, chunks, shards, levels, "0.5")
    spec = SourceSpec("tiff", "p.tif")
    return specs, compile_import(info, spec, specs, (1, 1, 1), "r", "p", {}, "d")


def test_the_plan_fuses_levels_while_blocks_fit_and_workers_stay_busy() -> None:
    """2 GiB in 64x256x256 chunks, 3 levels halving y and x: a task holds 64x1024x1024
    (an s2 chunk's worth) and writes s0, s1 and s2; 16 tasks. A 128 MiB image would get
    one such task, fewer than MIN_TASKS: it fuses s1 only (4 tasks) and s2 is a pyramid
    stage, its chunks found in the import's grid (at level 1)."""
    specs, plan = plan_for((512, 1024, 2048), (64, 256, 256), 3)
    (stage,) = plan.stages
    assert stage.kind == "import" and stage.level == 2 and len(stage.tasks) == 16
    task = stage.tasks[0]
    assert task.read == Roi((0, 0, 0), (64, 1024, 1024), 0)
    assert task.write == Roi((0, 0, 0), (64, 256, 256), 2)
    assert plan.extra["fused"] == (("s1", (1, 2, 2)), ("s2", (1, 2, 2)))
    assert plan.extra["piece"] == (64, 256, 1024)  # read a quarter of the block at once
    assert task.read.size * 2 <= FUSED_BUDGET_BYTES

    specs, plan = plan_for((64, 1024, 1024), (64, 256, 256), 3)
    assert [s.name for s in plan.stages] == ["import/s0", "import/pyramid-2"]
    assert plan.stages[0].level == 1 and len(plan.stages[0].tasks) == 4
    assert plan.stages[1].source.bounds.level == 1

    # shards: every task covers whole shards of every level it writes
    specs = import_levels(
        SourceInfo("p.tif", (128, 1024, 1024), "uint16", "zyx", {"z": 4.0, "y": 1.0}),
        (32, 128, 128),
        (64, 256, 256),
        3,
        "0.5",
    )
    fused, block = fused_levels(specs, (64, 256, 256), 2)
    assert fused >= 1
    for k in range(fused + 1):
        factor = (1, 2**k, 2**k)
        assert all(b % (s * f) == 0 for b, s, f in zip(block, specs[k].shards, factor))


def test_fused_levels_equal_the_engines_downsampling(tmp_path: Path, scheduler: str) -> None:
    """Odd sizes, z halved with y and x (isotropic), 5 levels: the import writes s1 to s3
    itself, s4 is a pyramid stage; every level equals block_mean of the one below."""
    source = data((37, 70, 90), "uint16")
    tif = tmp_path / "odd.tif"
    tifffile.imwrite(tif, source, metadata={"axes": "ZYX"})
    out = tmp_path / "odd.zarr"
    result = import_image(
        tif, out, chunks=(4, 8, 8), levels=5, scale="z=1,y=1,x=1", unit="um", scheduler=scheduler
    )
    assert [s.name for s in result.stages] == ["import/s0", "import/pyramid-4"]
    assert 0 < max(result.peak_worker_bytes.values()) <= result.projected_worker_bytes
    check_image(
        out, source, "zyx", dict.fromkeys("zyx", 1.0), dict.fromkeys("zyx", "micrometer"), 5
    )


def test_fused_levels_from_planes_into_shards(tmp_path: Path, scheduler: str) -> None:
    """A plane series (each plane read into the task's block) into a sharded image: the
    fused levels' shards are each written by one task, equal to the engine's downsampling."""
    source = data((24, 64, 96), "uint16", seed=3)
    folder = tmp_path / "planes"
    folder.mkdir()
    for z, plane in enumerate(source):
        tifffile.imwrite(folder / f"p{z}.tif", plane)
    out = tmp_path / "planes.zarr"
    result = import_image(
        folder,
        out,
        chunks=(4, 8, 8),
        shards=(8, 16, 16),
        levels=3,
        scale="z=3,y=1,x=1",
        unit="um",
        scheduler=scheduler,
    )
    assert result.stages[0].name == "import/s0" and len(result.stages) < 3
    check_image(
        out, source, "zyx", {"z": 3.0, "y": 1.0, "x": 1.0}, dict.fromkeys("zyx", "micrometer"), 3
    )


def test_write_chunks_equals_zarr(tmp_path: Path) -> None:
    """A box of whole chunks (clipped at the array's end) written chunk file by chunk file
    reads back as written; a box that is not whole chunks goes through zarr."""
    array = zarr.create_array(
        str(tmp_path / "a"),
        shape=(10, 20, 30),
        chunks=(4, 8, 8),
        dtype="uint16",
        compressors=fast_compressor("uint16", 3),
        fill_value=0,
    )
    expected = np.zeros((10, 20, 30), np.uint16)
    block = data((6, 12, 14), "uint16")
    write_chunks(str(tmp_path), "a", Roi((4, 8, 16), (10, 20, 30), 0), block)
    expected[4:10, 8:20, 16:30] = block
    odd = data((3, 5, 7), "uint16", seed=1)
    write_chunks(str(tmp_path), "a", Roi((1, 2, 3), (4, 7, 10), 0), odd)
    expected[1:4, 2:7, 3:10] = odd
    np.testing.assert_array_equal(zarr.open_array(str(tmp_path / "a"), mode="r")[...], expected)
    assert array.shape == (10, 20, 30)


def test_block_mean_of_slabs_is_that_of_the_block() -> None:
    """The fused levels are computed slab by slab along z; equal to the whole block's."""
    from engine.worker import importing

    block = data((12, 20, 22), "uint16", seed=2)
    old = importing.SLAB_BYTES
    importing.SLAB_BYTES = 1  # the smallest slab: one level-2 block (4 planes)
    try:
        outs = {}

        def capture(root, path, box, out):
            outs[path] = (box, out.copy())

        saved = importing.write_chunks
        importing.write_chunks = capture
        try:
            importing.write_levels(
                "", Roi((0, 0, 0), block.shape, 0), block, (("s1", (2, 2, 2)), ("s2", (2, 2, 2)))
            )
        finally:
            importing.write_chunks = saved
    finally:
        importing.SLAB_BYTES = old
    s1 = block_mean(block, (2, 2, 2))
    np.testing.assert_array_equal(outs["s1"][1], s1)
    np.testing.assert_array_equal(outs["s2"][1], block_mean(s1, (2, 2, 2)))
    assert outs["s2"][0] == Roi((0, 0, 0), (3, 5, 6), 2)


def test_connecting_starts_the_cluster_beside_the_caller() -> None:
    """The import's cluster starts in a thread while the source is checked: its client
    works from the caller's thread, the `with` stops it, a start error is raised where
    the client is asked for."""
    import threading

    import pytest

    from engine.core.errors import EngineError
    from engine.execute.cluster import Connecting

    pending = Connecting(workers=1)
    assert any(t.name == "connecting" for t in threading.enumerate())
    with pending as client:
        assert client.submit(sum, [1, 2], pure=False).result() == 3
    assert client.status == "closed"
    assert not any(t.name == "connecting" for t in threading.enumerate())
    with pytest.raises(EngineError, match="--workers must be at least 1"):
        with Connecting(workers=-1):
            pass


def test_tiff_memory_maps_a_window_at_a_time(tmp_path: Path, monkeypatch) -> None:
    """Contiguous TIFF data is read through memory maps of a few planes at a time, into a
    new array or into the caller's: the same boxes as the data, either byte order, steps
    and empty boxes included."""
    import engine.io.sources.tiff as tiff
    from engine.io.sources import open_source, read_into

    monkeypatch.setattr(tiff, "MAP_WINDOW_BYTES", 3000)  # 13x17x2 bytes a plane: 6 planes
    source = data((15, 13, 17), "uint16", seed=4)
    sizes = (("z", 1.0), ("y", 1.0), ("x", 1.0))
    for order in ("<", ">"):
        path = tmp_path / f"s{order == '>'}.tif"
        tifffile.imwrite(path, source, byteorder=order, metadata={"axes": "ZYX"})
        reader = open_source(SourceSpec("tiff", str(path), scale=sizes, unit="um"))
        assert reader.reader.offset is not None  # memory-mapped, not through zarr
        for box in [
            (slice(0, 15), slice(0, 13), slice(0, 17)),
            (slice(2, 14), slice(3, 9), slice(1, 16)),
            (slice(1, 15, 2), slice(0, 13, 3), slice(2, 17)),
            (slice(3, 3), slice(0, 1), slice(0, 1)),
        ]:
            np.testing.assert_array_equal(reader.read(box), source[box])
            out = np.empty(source[box].shape, np.uint16)
            read_into(reader, box, out)
            np.testing.assert_array_equal(out, source[box])
