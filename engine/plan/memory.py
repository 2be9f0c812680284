"""Memory a plan needs per worker, projected from chunk, halo, dtypes and the op chain.

Checked before anything runs (as cubed checks its projected memory), so a plan whose
chunks cannot fit in a worker is refused with the numbers instead of a worker being
killed halfway through. The model is deliberately pessimistic and simple: a task
holds its source block, and for each op of its chain the op's input, one float64
working copy of it and the op's output; plus what it writes. A worker holds that for
each thread, plus the decoded-chunk cache, the free memory glibc keeps for reuse and
the Python process itself. After a run, the measured peak is reported next to it
(RunResult.peak_worker_bytes).

A task is whatever its stage's grid makes it: a whole-ROI label block (engine/plan/
stitching.py) holds the ROI's input, mask and labels, and is projected as one task of
that size (a 64x512x512 frame: 0.4 GiB a task, 1.0 GiB a worker projected; 0.33 GiB
measured). `ngff-engine plan` shows each stage's task and the worker's projection.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from engine.core.errors import ConfigError
from engine.core.geometry import chain_boxes
from engine.core.worker_env import HEAP_TOP_PAD_BYTES
from engine.io.chunk_cache import DEFAULT_BUDGET_BYTES
from engine.plan.kinds import KINDS
from engine.plan.report import human_bytes
from engine.plan.types import Plan, Stage
from engine.worker.importing import SLAB_BYTES

PROCESS_BYTES = 200 * 1024**2  # a dask worker with numpy, scipy, zarr imported (~130 MiB measured)
WORKING_ITEMSIZE = 8  # ops may compute in float64
# freed memory a worker's heaps keep for the next task (HEAP_TOP_PAD_BYTES each, see
# engine/cli/entry.py): the task thread's heap and those of zarr's codec threads (measured:
# 190 MiB more peak per worker than without the pad)
HEAP_SLACK_BYTES = 3 * HEAP_TOP_PAD_BYTES
# an op that looks `h` pixels along an axis builds a filter of 2h+1 weights for it
# (scipy's gaussian: float64 weights per axis; a gaussian with sigma 1e9 asked for 59.6
# GiB of them and failed three times on every worker before this was counted)
KERNEL_ITEMSIZE = 8


@dataclass(frozen=True)
class Projection:
    stage: str
    step: str
    task_bytes: int  # the largest task of the stage


def project_stage(stage: Stage) -> Projection:
    """Peak bytes of the stage's largest task."""
    bounds = stage.source.bounds if stage.source is not None else stage.tasks.bounds
    reach = [sum(link.halo[a] for link in stage.chain) for a in range(stage.tasks.ndim)]
    peak = 0
    for task in stage.tasks.representatives(bounds, reach):  # not all: the distinct shapes
        peak = max(peak, _task_bytes(stage, task.read, task.write))
    return Projection(stage.name, stage.step, peak)


def _task_bytes(stage: Stage, read, write) -> int:
    total = 0
    if stage.source is not None:
        total += read.size * np.dtype(stage.source.dtype).itemsize
    if stage.labels is not None:
        total += write.size * np.dtype(stage.labels.dtype).itemsize
    if stage.chain and stage.source is not None:
        boxes = chain_boxes(write, stage.chain, stage.source.bounds)
        dtype = np.dtype(stage.source.dtype)
        worst = 0
        for link, box_in, box_out in zip(stage.chain, boxes[:-1], boxes[1:], strict=True):
            out_dtype = np.dtype(link.dtype or "uint32")
            worst = max(
                worst,
                box_in.size * (dtype.itemsize + WORKING_ITEMSIZE + out_dtype.itemsize)
                + box_out.size * out_dtype.itemsize
                + kernel_bytes(link.halo),
            )
            dtype = out_dtype
        total += worst
    if stage.target is not None and KINDS[stage.kind].writes_chunks:
        total += write.size * np.dtype(stage.target_dtype or "uint64").itemsize
    if stage.kind == "import" and stage.tasks.factors and stage.source is not None:
        # levels fused into the import (engine/worker/importing.py): each at most half
        # the block below it, and a slab's temporaries (sums, a float copy)
        total += read.size * np.dtype(stage.source.dtype).itemsize // 2 + 3 * SLAB_BYTES
    return int(total)


def kernel_bytes(halo: tuple[int, ...]) -> int:
    """The weights of a separable filter reaching `halo` pixels per axis; the halo is
    not clipped to the image, the filter is built whole whatever the block."""
    return sum((2 * int(h) + 1) * KERNEL_ITEMSIZE for h in halo if h)


def worker_bytes(task_bytes: int, threads: int) -> int:
    return PROCESS_BYTES + HEAP_SLACK_BYTES + DEFAULT_BUDGET_BYTES + threads * task_bytes


def projected_peak(plan: Plan, threads: int = 1) -> tuple[int, Projection | None]:
    """The projected worker peak and the stage that sets it."""
    worst: Projection | None = None
    for stage in plan.stages:
        projection = project_stage(stage)
        if worst is None or projection.task_bytes > worst.task_bytes:
            worst = projection
    return worker_bytes(worst.task_bytes if worst else 0, threads), worst


def check_fits(plan: Plan, limit: int, threads: int = 1) -> int:
    """Refuse a plan whose projected worker peak exceeds the worker memory limit."""
    peak, worst = projected_peak(plan, threads)
    if limit and worst is not None and peak > limit:
        raise ConfigError(
            f"step '{worst.step}' ({worst.stage}): a task needs about "
            f"{human_bytes(worst.task_bytes)} (chunk plus halo through its op chain, filter "
            "weights included); with "
            f"{threads} thread(s), the decoded-chunk cache and the worker process that is "
            f"{human_bytes(peak)} per worker, more than the worker memory limit "
            f"{human_bytes(limit)}: use smaller chunks, fewer threads per worker or "
            "workers with more memory"
        )
    return peak


def largest_read(plan: Plan) -> int:
    """Bytes of the largest array a stage of the plan reads (its region of the image or
    of a scratch array the run writes): what decides whether worker processes are worth
    starting for it (engine/execute/placement.py, `in_process_max`)."""
    return max(
        (
            stage.tasks.bounds.size * np.dtype(stage.source.dtype).itemsize
            for stage in plan.stages
            if stage.source is not None
        ),
        default=0,
    )
