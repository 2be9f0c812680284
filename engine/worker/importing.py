"""What an "import" chunk task does on a worker: read its box of the source, write it to
s0, and write the levels the plan fuses into the import (engine/plan/importing.py) from
the block it holds.

The source is opened once per worker process from its spec (engine/io/sources), so a
task costs one box read and its writes; the box covers whole write units (chunks or
shards) of every level the task writes, so no two tasks write the same chunk. What a
task gets (`ImportWork`: the spec and the fused levels) is the same object for every
task of a batch, which pickle sends once per batch.

The fused levels are computed slab by slab along the first axis (slabs a multiple of
every fused level's factor along it, so each is the same block mean as the whole block:
the blocks of a level never straddle a slab). Measured on a 64x1024x1024 uint16 block
halved twice in y and x: the whole block at once holds 390 MiB of temporaries (uint32
sums and float32 copies of the first level), slabs of 8 planes about 50 MiB, in the same
time.

A worker keeps the blocks' buffers between tasks (`buffer`): a few blocks' worth of memory,
whatever the image's size.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from engine.core import cpu
from engine.core.geometry import Roi
from engine.core.grid import ChunkTask
from engine.io.arrays import write_chunks
from engine.io.downsample import block_mean
from engine.io.sources import SourceSpec, open_source, read_into

if TYPE_CHECKING:
    from engine.plan.types import Stage
    from engine.worker.driver import Driver

SLAB_BYTES = 16 * 1024**2  # s0 bytes downsampled at once

_held = threading.local()  # per thread: a worker with several threads runs tasks at once


def buffer(name: str, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    """An array of `shape` in this process's buffer `name`, kept for the next task.

    Blocks above glibc's mmap threshold (32 MiB, engine/core/worker_env.py) come from a
    fresh mapping each time, every page faulted in and zeroed on first touch: measured,
    reading a 128 MiB block took 0.30 s into a new array and 0.07 s into one reused."""
    nbytes = math.prod(shape) * dtype.itemsize
    buffers = _held.__dict__.setdefault("buffers", {})
    held = buffers.get(name)
    if held is None or held.nbytes < nbytes:
        buffers.pop(name, None)
        held = buffers[name] = np.empty(nbytes, np.uint8)
    return held[:nbytes].view(dtype).reshape(shape)


@dataclass(frozen=True)
class ImportWork:
    spec: SourceSpec
    # per level written after s0: its array path and its factors from the level below
    fused: tuple[tuple[str, tuple[int, ...]], ...] = ()


def run_import(root: str, stage: Stage, task: ChunkTask, work: Any, common: dict) -> int:
    assert stage.target is not None
    if isinstance(work, SourceSpec):  # a batch queued by an older driver
        work = ImportWork(work)
    box = task.read  # the s0 box (task.write is the same box, or at the last fused level)
    source = open_source(work.spec, check=False)
    data = buffer("s0", tuple(int(n) for n in box.shape), np.dtype(source.info.dtype))
    read_into(source, box.to_slices(), data)
    write_chunks(root, stage.target, Roi(box.start, box.stop, 0), data)
    if work.fused:
        write_levels(root, box, data, work.fused)
    return task.read.size


def write_levels(
    root: str, box: Roi, data: np.ndarray, fused: tuple[tuple[str, tuple[int, ...]], ...]
) -> None:
    """Each fused level of the s0 `box` (whose start is a multiple of every level's
    factors from s0), computed from `data` slab by slab, then written."""
    total = [1] * data.ndim
    outs = []
    for _, factors in fused:
        total = [t * f for t, f in zip(total, factors, strict=True)]
        shape = tuple(-(-n // t) for n, t in zip(data.shape, total, strict=True))
        outs.append(buffer(f"s{len(outs) + 1}", shape, data.dtype))
    step0 = total[0]  # a slab is a multiple of every level's cumulative factor on axis 0
    plane = data.nbytes // max(1, data.shape[0])
    slab = max(step0, SLAB_BYTES // max(1, plane) // step0 * step0)
    before = cpu.switch(cpu.COMPUTE)
    try:
        for z in range(0, data.shape[0], slab):
            level = data[z : z + slab]
            at = z
            for out, (_, factors) in zip(outs, fused, strict=True):
                level = block_mean(level, factors)
                at //= factors[0]
                out[at : at + level.shape[0]] = level
    finally:
        cpu.switch(before)
    total = [1] * data.ndim
    for k, (out, (path, factors)) in enumerate(zip(outs, fused, strict=True), start=1):
        total = [t * f for t, f in zip(total, factors, strict=True)]
        start = tuple(s // t for s, t in zip(box.start, total, strict=True))
        stop = tuple(a + n for a, n in zip(start, out.shape, strict=True))
        write_chunks(root, path, Roi(start, stop, k), out)


def source_of(driver: Driver, stage: Stage) -> Callable[[int], Any]:
    """Driver side: every task gets the plan's source spec and the fused levels."""
    work = ImportWork(driver.plan.extra["source"], tuple(driver.plan.extra.get("fused", ())))
    return lambda position: work
