"""What an "import" chunk task does on a worker: read its box of the source, write it.

The source is opened once per worker process from its spec (engine/io/sources), so a
task costs one box read and one write; the box is the task's write box (whole chunks or
shards of s0, engine/plan/importing.py), so no two tasks write the same chunk. The spec
travels as each task's extra: the same object for every task of a batch, which pickle
sends once per batch.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from engine.core.grid import ChunkTask
from engine.io.arrays import write_target
from engine.io.sources import SourceSpec, open_source

if TYPE_CHECKING:
    from engine.plan.types import Stage
    from engine.worker.driver import Driver


def run_import(root: str, stage: Stage, task: ChunkTask, spec: SourceSpec, common: dict) -> int:
    assert stage.target is not None
    data = open_source(spec, check=False).read(task.write.to_slices())
    write_target(root, stage.target, task.write, data)
    return task.write.size


def source_of(driver: Driver, stage: Stage) -> Callable[[int], Any]:
    """Driver side: every task gets the plan's source spec."""
    spec = driver.plan.extra["source"]
    return lambda position: spec
