"""Fused chains of blockwise ops, per chunk: read the source box (chunk plus halo), run
the links, write the chunk ("blockwise"), or map it to a reduction's partial ("reduce").

Plain functions over arrays and numpy, no dask: the executor ships them to workers, and
tests call them directly. A task writes only its own box of its own chunk, so no two
tasks of a run ever write the same chunk. Work-space arrays have an optional leading
time axis; ops only ever see one spatial block (one time point).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from engine.core.errors import EngineError
from engine.core.geometry import Roi, chain_boxes
from engine.core.grid import ChunkTask
from engine.io.arrays import direct_files, open_array, read_array, write_target
from engine.io.chunk_cache import read_cached
from engine.io.location import Where
from tasks import OPS, Context

if TYPE_CHECKING:
    from engine.plan.types import Link, Source, Stage
    from engine.worker.driver import Driver


class StepFailed(Exception):
    """An op raised: carries the step it belongs to, since a fused task runs several."""

    def __init__(self, step: str, error: Exception) -> None:
        super().__init__(f"step '{step}': {type(error).__name__}: {error}")
        self.step = step
        self.error = error


def read_source(
    root: Where, source: Source, box: Roi, step: Sequence[int] | None = None
) -> np.ndarray:
    """A work-space box of a source (every `step`-th voxel per axis, when given); for the
    image, its one channel is selected.

    The input image (a source with a cache key) is read through the decoded-chunk cache.
    """
    slices = list(box.to_slices())
    if source.channel_axis is not None:
        slices.insert(source.channel_axis, slice(source.channel, source.channel + 1))
    if step is not None:
        if source.cache_key is not None or source.channel_axis is not None:
            raise ValueError("a strided read is for arrays of the work space only")
        slices = [slice(s.start, s.stop, f) for s, f in zip(slices, step, strict=True)]
    if source.cache_key is not None:
        array, files = open_array(root, source.path), direct_files(root, source.path)
        data = read_cached(array, slices, (root, source.cache_key), files=files)
    else:
        data = read_array(root, source.path, slices)
    if source.channel_axis is not None:
        data = data[tuple(0 if i == source.channel_axis else slice(None) for i in range(data.ndim))]
    return data


def time_slices(box: Roi, spatial: Sequence[int]) -> Iterator[tuple[int | None, tuple[Any, ...]]]:
    """(time point, index into a work-space block) for each time point of a box."""
    if len(spatial) == box.ndim:
        yield None, ()
        return
    for i, t in enumerate(range(int(box.start[0]), int(box.stop[0]))):
        yield t, (i,)


def spatial_part(slices: tuple[slice, ...], spatial: Sequence[int]) -> tuple[slice, ...]:
    return tuple(slices[i] for i in spatial)


def apply_chain(
    data: np.ndarray,
    boxes: Sequence[Roi],
    chain: Sequence[Link],
    spatial: Sequence[int],
    ctx: Context,
    values: dict[str, dict[Any, Any]],
    t: int | None,
) -> np.ndarray:
    """Run a fused chain on one spatial block covering boxes[0]; return the block of boxes[-1]."""
    block = data
    for i, link in enumerate(chain):
        op = OPS[link.op]
        params = op.params.model_validate(link.params)
        value = values[link.value_from][t] if link.value_from else None
        keep = spatial_part(boxes[i + 1].relative_to(boxes[i]), spatial)
        try:
            if op.apply_cropped is not None:
                block = op.apply_cropped(block, params, ctx, value, keep)
            else:
                block = op.apply(block, params, ctx, value)[keep]
        except Exception as exc:
            raise StepFailed(link.step, exc) from exc
    return block


def chain_output(
    root: Where,
    stage: Stage,
    read: Roi,
    write: Roi,
    spatial: Sequence[int],
    ctx: Context,
    values: dict[str, dict[Any, Any]],
) -> Iterator[tuple[int | None, np.ndarray]]:
    """The chain's result for each time point of `write`."""
    assert stage.source is not None
    boxes = chain_boxes(write, stage.chain, stage.source.bounds)
    assert boxes[0] == read, f"plan read box {read} differs from {boxes[0]}"
    data = read_source(root, stage.source, read)
    for t, index in time_slices(read, spatial):
        yield t, apply_chain(data[index], boxes, stage.chain, spatial, ctx, values, t)


def stack_time_points(parts: list[np.ndarray], spatial: Sequence[int], box: Roi) -> np.ndarray:
    """Per-time-point blocks back into one work-space block."""
    return parts[0] if len(spatial) == box.ndim else np.stack(parts)


def run_blockwise(root: Where, stage: Stage, task: ChunkTask, extra: Any, common: dict) -> int:
    read, write = task.read, task.write
    spatial, ctx, values = common["spatial"], common["context"], common["values"]
    parts = [block for _, block in chain_output(root, stage, read, write, spatial, ctx, values)]
    assert stage.target is not None
    write_target(root, stage.target, write, stack_time_points(parts, spatial, write))
    return write.size


def run_reduce(root: Where, stage: Stage, task: ChunkTask, extra: Any, common: dict) -> dict:
    """Partials of one reduction pass, per time point."""
    read, write = task.read, task.write
    spatial, ctx, values = common["spatial"], common["context"], common["values"]
    *chain, last = stage.chain
    op = OPS[last.op]
    params = op.params.model_validate(last.params)
    reduction = op.reduction(params)
    prefix = dataclasses.replace(stage, chain=tuple(chain))
    previous = values.get(f"{last.step}/reduce-{stage.pass_no - 1}", {})
    partials, blocks = {}, []
    for t, block in chain_output(root, prefix, read, write, spatial, ctx, values):
        partials[t] = reduction.map(block, params, stage.pass_no, previous.get(t))
        blocks.append(block)
    if stage.target is not None:
        write_target(root, stage.target, write, stack_time_points(blocks, spatial, write))
    return partials


def combine_reduction(stage: Stage, partials: Sequence[dict | None]) -> dict:
    """Per time point, the partials of a reduction stage combined (None: nothing)."""
    op = OPS[stage.chain[-1].op]
    reduction = op.reduction(op.params.model_validate(stage.chain[-1].params))
    combined: dict[Any, Any] = {}
    for part in partials:
        for t, partial in (part or {}).items():
            combined[t] = reduction.combine(combined[t], partial) if t in combined else partial
    return combined


def prepare_reduce(driver: Driver, stage: Stage) -> None:
    """A first pass that also stores its input (e.g. the smoothed image) for the ROI."""
    if stage.target is not None:
        driver.prepare_output(f"{stage.step}/input", stage.target_dtype, None)


def finish_reduce(driver: Driver, stage: Stage) -> None:
    """Per batch, one partial was combined on its worker; here the second level, then the
    op's finish: the value later links receive (per time point)."""
    link = stage.chain[-1]
    op = OPS[link.op]
    params = op.params.model_validate(link.params)
    reduction = op.reduction(params)
    combined = combine_reduction(stage, driver.collect(stage.name)[0])
    previous = driver.values.get(f"{stage.step}/reduce-{stage.pass_no - 1}", {})
    try:
        driver.values[stage.name] = {
            t: reduction.finish(c, params, stage.pass_no, previous.get(t))
            for t, c in combined.items()
        }
    except ValueError as exc:
        raise EngineError(f"step '{stage.step}': {exc}") from None


def prepare_blockwise(driver: Driver, stage: Stage) -> None:
    driver.prepare_output(stage.step, stage.target_dtype, None)


def fold_reduction(stage: Stage, results: list[Any]) -> list[Any]:
    """The first level of the reduction tree, on the worker: a batch's partials as one
    (in its first result's place), so the driver combines one partial per batch."""
    return [combine_reduction(stage, results), *([None] * (len(results) - 1))]
