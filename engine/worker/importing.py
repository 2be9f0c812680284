"""What an "import" chunk task does on a worker: read its box of the source, write it.

The source is opened once per worker process from its spec (engine/io/sources), so a
task costs one box read and one write; the box is the task's write box (whole chunks or
shards of s0, engine/plan/importing.py), so no two tasks write the same chunk.
"""

from __future__ import annotations

from engine.core.geometry import Roi
from engine.io.sources import SourceSpec, open_source
from engine.plan.compiler import Stage
from engine.worker.compute import write_target


def run_import(root: str, stage: Stage, write: Roi, spec: SourceSpec) -> int:
    assert stage.target is not None
    data = open_source(spec, check=False).read(write.to_slices())
    write_target(root, stage.target, write, data)
    return write.size
