"""What a plan does, in numbers: per stage, tasks, chunks and bytes read and written, halo.
For `ngff-engine plan` and the run's statistics."""

from __future__ import annotations

from typing import Any

import numpy as np

from engine.plan.kinds import KINDS
from engine.plan.types import Plan, Stage


def summarize(plan: Plan) -> list[dict[str, Any]]:
    """Per stage: tasks, chunks and bytes read and written, halo. For `plan` and run stats."""
    rows = []
    for stage in plan.stages:
        halo = [sum(link.halo[i] for link in stage.chain) for i in range(len(plan.axes))]
        read_bytes = write_bytes = read_chunks = 0
        tasks = stage.tasks
        if stage.labels is not None:
            read_bytes += tasks.volume("write") * np.dtype(stage.labels.dtype).itemsize
            read_chunks += tasks.volume("write", plan.chunks, stage.labels.bounds)
        if stage.source is not None:
            read_bytes += tasks.volume("read") * np.dtype(stage.source.dtype).itemsize
            if not stage.grid:  # on the plan's chunk grid (a pyramid level has its own)
                read_chunks += tasks.volume("read", plan.chunks, stage.source.bounds)
            if stage.target is not None and KINDS[stage.kind].writes_chunks:
                out_size = np.dtype(stage.target_dtype or "uint32").itemsize
                write_bytes = tasks.volume("write") * out_size
        rows.append(
            {
                "stage": stage.name,
                "kind": stage.kind,
                "tasks": len(stage.tasks),
                "chunks_read": read_chunks,
                "chunks_written": _chunks_written(plan, stage) if write_bytes else 0,
                "bytes_read": read_bytes,
                "bytes_written": write_bytes,
                "halo": dict(zip(plan.axes, halo, strict=True)),
            }
        )
    return rows


def _chunks_written(plan: Plan, stage: Stage) -> int:
    """A task writes one chunk of the plan's grid, or several (a whole-ROI label block);
    a pyramid level's task writes one chunk of its own grid."""
    if stage.grid:
        return len(stage.tasks)
    return stage.tasks.volume("write", plan.chunks, stage.tasks.bounds)


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"
