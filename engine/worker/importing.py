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
the blocks of a level never straddle a slab): a 64x1024x1024 uint16 block halved in y
and x at once would need its uint32 pair sums (256 MiB, then 128 MiB) beside it; slabs of
SLAB_BYTES need a few of those.

With fused levels a task reads its block in pieces along y (`ImportWork.piece`, whole
write units of s0): it holds one piece of s0 and the block's s1, not the block's s0.
A worker keeps these buffers between tasks (`buffer`): at most a block's s1 and a piece,
whatever the image's size (at 2 GiB: 195 to 201 MiB peak RSS per worker, measured by the
benchmark, against 142 MiB at 64 MiB where blocks are smaller).
"""

from __future__ import annotations

import itertools
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
    # with fused levels: the part of a task's block read at once (whole write units of
    # s0, whole blocks of s1's factors); () for the whole block
    piece: tuple[int, ...] = ()


def run_import(root: str, stage: Stage, task: ChunkTask, work: Any, common: dict) -> int:
    """Read the task's s0 box (`task.read`; `task.write` is the same box, or its box at
    the last fused level) and write it; with fused levels, piece by piece, each piece's
    s1 into the block's s1, then s1 and the levels above it from that."""
    assert stage.target is not None
    if isinstance(work, SourceSpec):  # a batch queued by an older driver
        work = ImportWork(work)
    box = task.read
    source = open_source(work.spec, check=False)
    dtype = np.dtype(source.info.dtype)
    if not work.fused:
        data = buffer("s0", tuple(int(n) for n in box.shape), dtype)
        read_into(source, box.to_slices(), data)
        write_chunks(root, stage.target, Roi(box.start, box.stop, 0), data)
        return box.size
    path, factors = work.fused[0]
    shape = tuple(-(-int(n) // f) for n, f in zip(box.shape, factors, strict=True))
    first = buffer("s1", shape, dtype)
    piece = work.piece or tuple(int(n) for n in box.shape)
    for offset in itertools.product(
        *(range(0, int(n), p) for n, p in zip(box.shape, piece, strict=True))
    ):
        start = tuple(a + o for a, o in zip(box.start, offset, strict=True))
        stop = tuple(min(a + p, b) for a, p, b in zip(start, piece, box.stop, strict=True))
        part = Roi(start, stop, 0)
        data = buffer("s0", tuple(int(n) for n in part.shape), dtype)
        read_into(source, part.to_slices(), data)
        write_chunks(root, stage.target, part, data)
        at = tuple(o // f for o, f in zip(offset, factors, strict=True))
        span = zip(at, data.shape, factors, strict=True)
        into = first[tuple(slice(a, a + -(-n // f)) for a, n, f in span)]
        mean_into(data, factors, into)
    level = Roi(
        tuple(a // f for a, f in zip(box.start, factors, strict=True)),
        tuple(a // f + n for a, f, n in zip(box.start, factors, shape, strict=True)),
        1,
    )
    write_chunks(root, path, level, first)
    if len(work.fused) > 1:
        write_levels(root, level, first, work.fused[1:], 2)
    return box.size


def mean_into(data: np.ndarray, factors: tuple[int, ...], out: np.ndarray) -> None:
    """`out[...] = block_mean(data, factors)`, slab by slab along the first axis (slabs of
    whole blocks: the same means), so the temporaries stay small."""
    plane = data.nbytes // max(1, data.shape[0])
    slab = max(factors[0], SLAB_BYTES // max(1, plane) // factors[0] * factors[0])
    before = cpu.switch(cpu.COMPUTE)
    try:
        for z in range(0, data.shape[0], slab):
            level = block_mean(data[z : z + slab], factors)
            out[z // factors[0] : z // factors[0] + level.shape[0]] = level
    finally:
        cpu.switch(before)


def write_levels(
    root: str,
    box: Roi,
    data: np.ndarray,
    fused: tuple[tuple[str, tuple[int, ...]], ...],
    first: int = 1,
) -> None:
    """Each level of `fused` (the first is level `first`) from `data`, the block `box`
    of the level below (its start a multiple of every level's factors from it), computed
    slab by slab, then written."""
    total = [1] * data.ndim
    outs = []
    for _, factors in fused:
        total = [t * f for t, f in zip(total, factors, strict=True)]
        shape = tuple(-(-n // t) for n, t in zip(data.shape, total, strict=True))
        outs.append(buffer(f"s{first + len(outs)}", shape, data.dtype))
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
    for k, (out, (path, factors)) in enumerate(zip(outs, fused, strict=True), start=first):
        total = [t * f for t, f in zip(total, factors, strict=True)]
        start = tuple(s // t for s, t in zip(box.start, total, strict=True))
        stop = tuple(a + n for a, n in zip(start, out.shape, strict=True))
        write_chunks(root, path, Roi(start, stop, k), out)


def source_of(driver: Driver, stage: Stage) -> Callable[[int], Any]:
    """Driver side: every task gets the plan's source spec and the fused levels."""
    extra = driver.plan.extra
    work = ImportWork(extra["source"], tuple(extra.get("fused", ())), tuple(extra.get("piece", ())))
    return lambda position: work
