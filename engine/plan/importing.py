"""The plan of an import: one "import" stage (each task reads its box of the source and
writes it to s0), then one "pyramid" stage per level, as for any output.

Tasks write whole write units (a chunk, or a shard when the output is sharded: one writer
per chunk or shard). Where the source decodes in larger units than that (a TIFF page
stored as one strip, HDF5 chunks larger than the output's), a task covers as many write
units as one source unit spans, so no unit is decoded twice, up to TASK_BUDGET_BYTES per
task; beyond that the unit is decoded once per task that meets it, which costs time (and
a worker holds one decoded unit while it reads: a page stored as a single huge strip is
that page; tiled files, the usual for large planes, hold a tile).

Levels halve y and x; z is halved too once its voxel size is no larger than that of y
(an isotropic volume stays isotropic; an anisotropic one keeps its z until y and x
catch up). Each level is the block mean of the one below (engine/io/downsample.py
`block_mean`).

The first levels are written by the import tasks themselves ("fused"): a task whose s0
block covers whole write units of s1 (and s2, ...) computes those levels from the block
it holds, so they cost no re-read and no decode of s0. A task's block grows to the least
common multiple of each fused level's write unit times its factor, as long as it stays
within FUSED_BUDGET_BYTES and leaves at least MIN_TASKS tasks (both workers busy: one
task of 128 MiB per worker at a 256 MiB image would leave one idle at the end); the
levels above are pyramid stages, chunk by chunk as their inputs are written. Measured
at 256 MiB (uint16, chunks 64x256x256, 3 levels, 2 workers): the pyramid stages spent
0.31 CPU s decoding s0 and s1 again, 18% of the import's 1.7 CPU s.

The import stage's tasks are then a grid at the last fused level K (its write boxes are
level-K boxes; each reads its s0 box, `factors` times larger): the pyramid stage after it
reads level K, so the executor finds the import task a chunk depends on in that grid.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from engine.core.errors import ConfigError
from engine.core.geometry import Roi
from engine.core.grid import ChunkGrid
from engine.core.layout import run_folder
from engine.io.metadata import Axis
from engine.io.ngff_write import LevelSpec
from engine.io.sources import SourceInfo, SourceSpec
from engine.plan.types import OutputPlan, Plan, Source, Stage
from tasks import Context
from tasks.spec import LENGTH_UNITS_IN_MICROMETER

STEP = "import"
TASK_BUDGET_BYTES = 256 * 1024**2  # most a task reads to avoid decoding a source unit twice
FUSED_BUDGET_BYTES = 128 * 1024**2  # most an s0 block grows to write more levels at once
MIN_TASKS = 4  # a fused level must leave this many import tasks (or as many as without it)
DEFAULT_CHUNKS = {"t": 1, "c": 1, "z": 64, "y": 256, "x": 256}
AXIS_TYPES = {"t": "time", "c": "channel", "z": "space", "y": "space", "x": "space"}


def import_axes(info: SourceInfo) -> tuple[Axis, ...]:
    return tuple(Axis(a, AXIS_TYPES[a], info.units.get(a) if a != "c" else None) for a in info.axes)


def per_axis(values: Sequence[int] | None, info: SourceInfo, what: str) -> tuple[int, ...] | None:
    if values is None:
        return None
    if len(values) != len(info.axes):
        raise ConfigError(
            f"--{what} {','.join(map(str, values))}: {len(values)} values; the image has "
            f"{len(info.axes)} axes ({','.join(info.axes)})"
        )
    if any(v < 1 for v in values):
        raise ConfigError(f"--{what} {','.join(map(str, values))}: sizes must be positive")
    return tuple(int(v) for v in values)


def import_levels(
    info: SourceInfo,
    chunks: Sequence[int] | None,
    shards: Sequence[int] | None,
    n_levels: int,
    version: str,
) -> tuple[LevelSpec, ...]:
    """The output's levels: shapes, chunks (clipped to small levels), shards and scales."""
    if n_levels < 1:
        raise ConfigError(f"--levels must be at least 1, got {n_levels}")
    chunks = per_axis(chunks, info, "chunks") or tuple(DEFAULT_CHUNKS[a] for a in info.axes)
    shards = per_axis(shards, info, "shards")
    if shards is not None:
        if version != "0.5":
            raise ConfigError("--shards needs NGFF 0.5 (zarr v3); use --ngff 0.5")
        bad = [a for a, s, c in zip(info.axes, shards, chunks, strict=True) if s % c]
        if bad:
            raise ConfigError(
                f"--shards {','.join(map(str, shards))} must be a multiple of the chunks "
                f"{','.join(map(str, chunks))} (axis {', '.join(bad)})"
            )
    scale = [float(info.scale.get(a, 1.0)) if a != "c" else 1.0 for a in info.axes]
    shape = list(info.shape)
    levels = []
    for k in range(n_levels):
        if k:
            factors = level_factors(info.axes, scale)
            shape = [-(-s // f) for s, f in zip(shape, factors, strict=True)]
            scale = [s * f for s, f in zip(scale, factors, strict=True)]
        level_chunks = tuple(min(c, s) for c, s in zip(chunks, shape, strict=True))
        level_shards = None
        if shards is not None:
            level_shards = tuple(
                lc if lc < c else min(sh, -(-s // c) * c)
                for sh, c, lc, s in zip(shards, chunks, level_chunks, shape, strict=True)
            )
        levels.append(
            LevelSpec(
                f"s{k}",
                tuple(shape),
                level_chunks,
                tuple(scale),
                (0.0,) * len(shape),
                level_shards,
            )
        )
    return tuple(levels)


def level_factors(axes: str, scale: Sequence[float]) -> tuple[int, ...]:
    """2 for y and x; 2 for z while its voxel is no larger than y's; 1 for t and c."""
    y = scale[axes.index("y")] if "y" in axes else None
    return tuple(
        2 if a in "yx" or (a == "z" and y is not None and scale[i] <= y * (1 + 1e-9)) else 1
        for i, a in enumerate(axes)
    )


def task_grid(level: LevelSpec, read_unit: Sequence[int], itemsize: int) -> tuple[int, ...]:
    """Per axis, what a task writes: the write unit (shard or chunk), grown to cover the
    source's decode unit where that is larger, while a task stays within the budget."""
    write = level.shards or level.chunks
    grid = list(write)
    for a in sorted(range(len(grid)), key=lambda a: -read_unit[a]):
        if read_unit[a] <= grid[a]:
            continue
        grown = min(-(-read_unit[a] // grid[a]) * grid[a], -(-level.shape[a] // grid[a]) * grid[a])
        if math.prod([*grid[:a], grown, *grid[a + 1 :]]) * itemsize <= TASK_BUDGET_BYTES:
            grid[a] = grown
    return tuple(grid)


def fused_levels(
    levels: Sequence[LevelSpec], grid: Sequence[int], itemsize: int
) -> tuple[int, tuple[int, ...]]:
    """How many levels above s0 the import tasks write themselves, and the s0 block each
    task then covers (a multiple of `grid` and, per fused level, of its write unit times
    its factor from s0, so every task writes whole write units of every level)."""
    shape = levels[0].shape
    block = tuple(grid)

    def tasks(b: Sequence[int]) -> int:
        return math.prod(-(-s // g) for s, g in zip(shape, b, strict=True))

    fused = 0
    for k in range(1, len(levels)):
        factors = _factors(levels[0], levels[k])
        unit = levels[k].shards or levels[k].chunks
        grown = tuple(math.lcm(b, u * f) for b, u, f in zip(block, unit, factors, strict=True))
        size = math.prod(min(g, s) for g, s in zip(grown, shape, strict=True)) * itemsize
        if size > FUSED_BUDGET_BYTES or tasks(grown) < min(MIN_TASKS, tasks(block)):
            break
        block, fused = grown, k
    return fused, block


def read_piece(
    base: LevelSpec, first: LevelSpec, block: Sequence[int], read_unit: Sequence[int]
) -> tuple[int, ...]:
    """What a task with fused levels reads at once: its block, cut along y (the axis
    before last) into whole write units of s0 that are also whole blocks of s1's factor
    and whole decode units of the source. Only s1 of the whole block is then held with
    the piece: a 64x1024x1024 uint16 block read as four 64x256x1024 pieces holds 32 MiB
    of s0 instead of 128 (measured worker peak, 128 MiB blocks: 215 MB against 319 MB
    reading whole blocks)."""
    if len(block) < 2:
        return ()
    a = len(block) - 2
    unit = (base.shards or base.chunks)[a]
    step = math.lcm(unit, _factors(base, first)[a], max(1, int(read_unit[a])))
    if step >= block[a]:
        return ()
    return tuple(step if i == a else b for i, b in enumerate(block))


def _factors(lower: LevelSpec, upper: LevelSpec) -> tuple[int, ...]:
    return tuple(max(1, round(u / lo)) for lo, u in zip(lower.scale, upper.scale, strict=True))


def config_hash(spec: SourceSpec, options: Mapping[str, Any], identity: Any) -> str:
    """What an import's bytes depend on: the source (its files' sizes and times), how it is
    read, and the output's options. A resume is refused if it changed."""
    data = {"spec": repr(spec), "options": options, "identity": identity}
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:16]


def compile_import(
    info: SourceInfo,
    spec: SourceSpec,
    levels: Sequence[LevelSpec],
    read_unit: Sequence[int],
    run_id: str,
    name: str,
    provenance: dict[str, Any],
    digest: str,
) -> Plan:
    """The import's stages over the whole source, on the output's own axes (the channel
    axis included: a pyramid level keeps every channel)."""
    axes = import_axes(info)
    base = levels[0]
    bounds = Roi.from_shape(base.shape, 0)
    grid = task_grid(base, read_unit, np.dtype(info.dtype).itemsize)
    fused, block = fused_levels(levels, grid, np.dtype(info.dtype).itemsize)
    piece: tuple[int, ...] = ()
    if fused:
        piece = read_piece(base, levels[1], block, read_unit)
        factors = _factors(base, levels[fused])
        grid = tuple(b // f for b, f in zip(block, factors, strict=True))
        top = Roi.from_shape(levels[fused].shape, fused)
        tasks = ChunkGrid(grid, top, top, bounds, factors=factors)
    else:
        tasks = ChunkGrid(grid, bounds, bounds, bounds)
    source = Source(spec.path, info.dtype, bounds)
    stages = [
        Stage(
            f"{STEP}/s0",
            STEP,
            "import",
            source,
            (),
            tasks,
            target=base.path,
            target_dtype=info.dtype,
            level=fused,
            grid=grid,
            # tasks own whole shards of every level they write; batches need not group them
            shards=(base.shards or ()) if not fused else (),
            batch_size=1 if fused else None,
        )
    ]
    previous = stages[0].name
    for k in range(fused + 1, len(levels)):
        lower, upper = levels[k - 1], levels[k]
        factors = tuple(
            max(1, round(u / lo)) for lo, u in zip(lower.scale, upper.scale, strict=True)
        )
        up_bounds = Roi.from_shape(upper.shape, k)
        low_bounds = Roi.from_shape(lower.shape, k - 1)
        name_k = f"{STEP}/pyramid-{k}"
        stages.append(
            Stage(
                name_k,
                STEP,
                "pyramid",
                Source(lower.path, info.dtype, low_bounds),
                (),
                ChunkGrid(upper.chunks, up_bounds, up_bounds, low_bounds, factors=factors),
                (previous,),
                upper.path,
                info.dtype,
                level=k,
                grid=upper.chunks,
                shards=upper.shards or (),
            )
        )
        previous = name_k
    spatial = tuple(i for i, a in enumerate(info.axes) if a in "zyx")
    spacing = tuple(
        base.scale[i] * LENGTH_UNITS_IN_MICROMETER.get(info.units.get(info.axes[i], ""), 1.0)
        for i in spatial
    )
    output = OutputPlan(STEP, "image", name, info.dtype, axes, tuple(levels), provenance, digest)
    return Plan(
        image=spec.path,
        level=0,
        roi=bounds,
        axes=tuple(info.axes),
        spatial=spatial,
        chunks=base.chunks,
        context=Context(spacing=spacing),
        stages=tuple(stages),
        outputs=(output,),
        scratch=run_folder(run_id),
        extra={
            "source": spec,
            # the levels the import tasks write after s0: path, factors from the one below
            "fused": tuple(
                (levels[k].path, _factors(levels[k - 1], levels[k])) for k in range(1, fused + 1)
            ),
            "piece": piece,
        },
    )
