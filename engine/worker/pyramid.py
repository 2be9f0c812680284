"""Pyramid levels of an output, chunk by chunk, each from the level below as soon as the
chunks it reads are written."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from engine.core.grid import ChunkTask
from engine.io.arrays import write_target
from engine.io.downsample import block_mean
from engine.io.location import Where
from engine.worker.chain import read_source

if TYPE_CHECKING:
    from engine.plan.types import Stage


def run_pyramid(root: Where, stage: Stage, task: ChunkTask, extra: Any, common: dict) -> int:
    """One chunk of a pyramid level from the level below: every f-th voxel for labels
    (read chunk by chunk, never the whole box), the mean over f-blocks for images."""
    assert stage.source is not None and stage.target is not None
    read, write, factors = task.read, task.write, stage.tasks.factors
    if stage.connectivity == 0:
        result = read_source(root, stage.source, read, step=factors)
    else:
        result = block_mean(read_source(root, stage.source, read), factors)
    write_target(root, stage.target, write, result[tuple(slice(0, int(s)) for s in write.shape)])
    return write.size
