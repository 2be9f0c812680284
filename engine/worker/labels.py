"""Exact connected components and instance segmentation across chunks, as cluster_tools
and igneous do it: provisional ids per chunk ("label": local labels; "segment": a
segmenter run on the chunk grown by an overlap), pairs of ids that are one object across
chunk borders ("faces": touching voxels on the face arrays; "match": IoU of the two
views of the band around a border), one union-find over the pairs on the driver
("merge"), and a relabel of each chunk from the resulting table ("relabel").
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from engine.core.errors import OutputConflict
from engine.core.geometry import Roi, chunk_roi, chunks_touching
from engine.core.grid import ChunkTask
from engine.io.arrays import open_array, read_array, write_chunks, write_target
from engine.io.location import Where
from engine.worker.chain import (
    StepFailed,
    chain_output,
    read_source,
    spatial_part,
    stack_time_points,
    time_slices,
)
from engine.worker.faces import face_array_path, face_box, face_planes
from tasks import OPS
from tasks.instance import matching_pairs, number_core
from tasks.label import FaceComponents, crossing_pairs, final_ids, resolve_face_components

if TYPE_CHECKING:
    from engine.plan.types import Stage
    from engine.worker.driver import Driver


@dataclass(frozen=True)
class LabelResult:
    """What a label merge produced: how many objects, the dtype they need, the id offset
    (an --update continues after the output's largest id) and the objects per chunk."""

    count: int
    dtype: str
    offset: int = 0
    counts: tuple[int, ...] = ()


def number_time_points(
    numbered: Iterable[tuple[np.ndarray, int]], spatial: Sequence[int], box: Roi
) -> tuple[np.ndarray, int]:
    """Per-time-point ids 1..n_t (with their n_t) as one block of ids unique across time
    points: each time point's ids follow the previous ones'. Returns the block and the
    number of ids."""
    parts, count = [], 0
    for labels, n in numbered:
        labels = labels.astype(np.uint32, copy=False)
        if count:
            labels[labels > 0] += np.uint32(count)
        parts.append(labels)
        count += n
    if len(parts) == 1 and len(spatial) < box.ndim:  # one time point: a view, not a copy
        return parts[0][np.newaxis], count  # (a 16 Mi frame's copy is a fresh 64 MiB mmap)
    return stack_time_points(parts, spatial, box), count


def chunk_boxes(box: Roi, chunks: Sequence[int]) -> list[Roi]:
    """The parts of `box` in each chunk of the grid `chunks` it touches, in C order."""
    return [part.intersect(box) for _, part in chunks_touching(box, chunks, box)]


def labelled(root: Where, stage: Stage, task: ChunkTask, common: dict) -> tuple[np.ndarray, int]:
    """Labels 1..n of a task's box, unique across its time points, and n.

    A block of several chunks whose chain needs no halo runs the chain up to the label
    chunk by chunk (each read straight from its chunk file) and labels the mask those
    make: reading the 64x512x512 float32 frame as one block took 0.19 s of CPU against
    0.06 s chunk by chunk (a fresh 64 MiB array filled, against chunks read in place).
    """
    read, write = task.read, task.write
    spatial, ctx, values = common["spatial"], common["context"], common["values"]
    *links, link = stage.chain
    parts = chunk_boxes(write, common["chunks"])
    if read != write or not links or len(parts) == 1:
        return number_time_points(
            (
                (labels, int(labels.max(initial=0)))
                for _, labels in chain_output(root, stage, read, write, spatial, ctx, values)
            ),
            spatial,
            write,
        )
    prefix = dataclasses.replace(stage, chain=tuple(links))
    shape = tuple(write.shape[a] for a in spatial)
    masks: dict[int | None, np.ndarray] = {}
    for part in parts:
        where = spatial_part(part.relative_to(write), spatial)
        for t, block in chain_output(root, prefix, part, part, spatial, ctx, values):
            masks.setdefault(t, np.empty(shape, np.dtype(links[-1].dtype)))[where] = block
    params = OPS[link.op].params.model_validate(link.params)

    def numbered() -> Iterator[tuple[np.ndarray, int]]:
        for mask in masks.values():  # in time order: every part holds every time point
            try:
                labels = OPS[link.op].apply(mask, params, ctx)
            except Exception as exc:
                raise StepFailed(link.step, exc) from exc
            yield labels, int(labels.max(initial=0))

    return number_time_points(numbered(), spatial, write)


def run_label(root: Where, stage: Stage, task: ChunkTask, extra: Any, common: dict) -> int:
    """Local labels 1..n of one chunk (unique across its time points); returns n.

    Besides the labels, the chunk's first and last plane along each spatial axis go to
    the face arrays, where the face pass finds them cheaply: those at a border inside
    the ROI (`stage.region`), the only ones it pairs.
    """
    write, spatial = task.write, common["spatial"]
    block, count = labelled(root, stage, task, common)
    assert stage.target is not None
    write_chunks(root, stage.target, write, block)  # a whole block: its chunks one by one
    region = stage.region
    for axis in spatial:
        path = face_array_path(stage.target, axis)
        if region is None or write.start[axis] > region.start[axis]:
            write_target(root, path, face_box(write, task.index, axis, 0), block.take([0], axis))
        if region is None or write.stop[axis] < region.stop[axis]:
            write_target(root, path, face_box(write, task.index, axis, 1), block.take([-1], axis))
    return count


def run_label_block(root: Where, stage: Stage, task: ChunkTask, offset: int, common: dict) -> int:
    """Final ids of the whole ROI in one task: 1..n (consecutive across time points),
    after `offset` (the output's largest id on --update), written straight into the
    target; returns n. Refuses, before writing, ids the target's dtype cannot hold."""
    block, count = labelled(root, stage, task, common)
    return write_final(root, stage, task.write, block, count, offset)


def write_final(
    root: Where, stage: Stage, write: Roi, block: np.ndarray, count: int, offset: int
) -> int:
    """Write ids 1..count of a whole-ROI block after `offset` into the stage's target;
    returns count. Refuses, before writing, ids the target's dtype cannot hold."""
    assert stage.target is not None
    dtype = np.dtype(open_array(root, stage.target, "r").dtype)
    if count + offset > np.iinfo(dtype).max:
        raise OutputConflict(
            f"step '{stage.step}': {stage.target} holds {dtype} ids; {count + offset} objects "
            f"need {label_dtype(count + offset)}: use --overwrite"
        )
    if offset:
        block = block.astype(dtype, copy=False)
        block[block > 0] += dtype.type(offset)
    write_chunks(root, stage.target, write, block)
    return count


def run_faces(
    root: Where, stage: Stage, task: ChunkTask, bases: dict[tuple[int, ...], int], common: dict
) -> np.ndarray:
    """Pairs of provisional ids touching across this chunk's upper faces.

    Reads, per axis, the chunk's last plane and the next chunks' first planes (widened by
    one voxel along the other axes, for diagonal neighbours) from the face arrays.
    """
    assert stage.source is not None
    spatial, chunks = common["spatial"], common["chunks"]
    read, write, index = task.read, task.write, task.index
    found = [np.zeros((0, 2), dtype=np.uint64)]
    for d, axis in enumerate(spatial):
        if write.stop[axis] >= read.stop[axis]:
            continue
        slab_box = face_box(read, index, axis, 1, faces=2)
        slab = read_array(root, face_array_path(stage.source.path, axis), slab_box)
        slab = slab.astype(np.uint64)
        for other, base in bases.items():
            side = other[axis] - index[axis]
            if side not in (0, 1) or base == 0:
                continue
            box = chunk_roi(other, chunks, stage.source.bounds).intersect(read)
            box = face_box(box, other, axis, 0) if side else face_box(box, index, axis, 1)
            box = box.intersect(slab_box)
            if not box.empty():
                view = slab[box.relative_to(slab_box)]
                view[view > 0] += np.uint64(base)
        owned = [
            (int(write.start[a] - read.start[a]), int(write.stop[a] - read.start[a]))
            for a in spatial
            if a != axis
        ]
        for _, t_index in time_slices(slab_box, spatial):
            found.append(crossing_pairs(slab[t_index], d, 1, owned, stage.connectivity))
    return np.unique(np.concatenate(found), axis=0)


@dataclasses.dataclass(frozen=True)
class RelabelTable:
    """What a chunk needs to relabel itself: its provisional ids first..first+count-1,
    the face components among them, and the output's id offset and dtype."""

    components: FaceComponents
    first: int
    count: int
    offset: int
    dtype: str

    def table(self) -> np.ndarray:
        """Local id -> final id (0 stays 0)."""
        final = final_ids(self.components, self.first, self.count) + np.uint64(self.offset)
        return np.concatenate([np.zeros(1, np.uint64), final]).astype(self.dtype)


def run_segment(root: Where, stage: Stage, task: ChunkTask, extra: Any, common: dict) -> int:
    """Run the segmenter on the chunk grown by the overlap; keep provisional ids 1..n for
    the objects of the chunk's own voxels (unique across its time points); returns n.

    The chunk's own labels go to the local array; the labels it saw in the band of
    twice the overlap around each border it shares with a chunk of the ROI go to the
    face arrays (zero where the band leaves the ROI), for the match pass.
    """
    assert stage.target is not None and stage.region is not None
    spatial, write = common["spatial"], task.write
    link = stage.chain[-1]
    labels, count, seen = segmented(root, stage, task, common)
    write_target(root, stage.target, write, labels[write.relative_to(seen)])
    for axis in spatial:
        overlap = link.halo[axis]
        for side, border in enumerate((write.start[axis], write.stop[axis])):
            if not stage.region.start[axis] < border < stage.region.stop[axis]:
                continue
            start, stop = list(write.start), list(write.stop)
            start[axis], stop[axis] = border - overlap, border + overlap
            band = Roi(tuple(start), tuple(stop), write.level)
            part = band.intersect(seen)
            face = np.zeros(band.shape, dtype=np.uint32)
            face[part.relative_to(band)] = labels[part.relative_to(seen)]
            path = face_array_path(stage.target, axis)
            planes = face_planes(stage, axis)
            write_target(root, path, face_box(write, task.index, axis, side, planes=planes), face)
    return count


def segmented(
    root: Where, stage: Stage, task: ChunkTask, common: dict
) -> tuple[np.ndarray, int, Roi]:
    """The segmenter's objects of the chunk's own voxels as ids 1..n (unique across its
    time points) over the chunk grown by the overlap (within the ROI), n, and that box."""
    assert stage.region is not None
    spatial, ctx, values = common["spatial"], common["context"], common["values"]
    *links, link = stage.chain
    params = OPS[link.op].params.model_validate(link.params)
    write = task.write
    seen = write.grow(link.halo).intersect(stage.region)
    own = spatial_part(write.relative_to(seen), spatial)
    prefix = dataclasses.replace(stage, chain=tuple(links))

    def numbered() -> Iterator[tuple[np.ndarray, int]]:
        for _, block in chain_output(root, prefix, task.read, seen, spatial, ctx, values):
            try:
                labels = OPS[link.op].apply(block, params, ctx)
            except Exception as exc:
                raise StepFailed(link.step, exc) from exc
            yield number_core(labels, own)

    labels, count = number_time_points(numbered(), spatial, seen)
    return labels, count, seen


def run_segment_block(root: Where, stage: Stage, task: ChunkTask, offset: int, common: dict) -> int:
    """The segmenter on the whole ROI in one task (the ROI is its overlap's limit, as for
    a chunk): final ids 1..n after `offset` straight into the target; returns n."""
    labels, count, seen = segmented(root, stage, task, common)
    assert seen == task.write, f"one block sees the whole ROI {task.write}, not {seen}"
    return write_final(root, stage, task.write, labels, count, offset)


def run_match(root: Where, stage: Stage, task: ChunkTask, bases: dict, common: dict) -> np.ndarray:
    """Pairs of provisional ids that are one object across this chunk's upper borders:
    per axis, this chunk's band around the border against the upper neighbour's view of
    the same band (adjacent faces in the face array), matched by IoU."""
    assert stage.source is not None
    spatial = common["spatial"]
    read, write, index = task.read, task.write, task.index
    params = OPS[stage.chain[-1].op].params.model_validate(stage.chain[-1].params)
    found = [np.zeros((0, 2), dtype=np.uint64)]
    for axis in spatial:
        if write.stop[axis] >= read.stop[axis]:
            continue
        box = face_box(write, index, axis, 1, faces=2, planes=face_planes(stage, axis))
        faces = read_array(root, face_array_path(stage.source.path, axis), box)
        low, high = np.split(faces, 2, axis=axis)
        pairs = matching_pairs(low, high, params.iou_threshold)
        upper = tuple(i + (a == axis) for a, i in enumerate(index))
        found.append(pairs + np.array([bases[index], bases[upper]], dtype=np.uint64))
    return np.unique(np.concatenate(found), axis=0)


def run_relabel(
    root: Where, stage: Stage, task: ChunkTask, table: RelabelTable, common: dict
) -> int:
    assert stage.source is not None and stage.target is not None
    write, table = task.write, table.table()
    for part in chunk_boxes(write, common["chunks"]):  # a block: chunk by chunk, in place
        local = read_source(root, stage.source, part)
        # np.take: 3.5 ms on a 1x32x256x256 chunk against 4.9 ms for table[local]
        write_target(root, stage.target, part, np.take(table, local))
    return write.size


def label_dtype(count: int) -> str:
    """The dtype of a label array holding ids up to `count`."""
    return "uint32" if count < 2**32 else "uint64"


def prepare_local(driver: Driver, stage: Stage) -> None:
    driver.prepare_output(f"{stage.step}/local", "uint32", None)


def prepare_block(driver: Driver, stage: Stage) -> None:
    """Create the output before the one label task writes it, and learn the id offset
    (an --update continues after the output's largest id; a resumed run keeps its own):
    uint32, as ids of at most LABEL_BLOCK_VOXELS voxels need (engine/plan/stitching.py)."""
    offset = driver.prepare_output(stage.step, "uint32", 0)
    driver.labels[stage.step] = LabelResult(0, label_dtype(offset), offset)


def block_offset(driver: Driver, stage: Stage) -> Callable[[int], int]:
    offset = driver.labels[stage.step].offset
    return lambda position: offset


def finish_block(driver: Driver, stage: Stage) -> None:
    """The object count, as a merge records it (the run's result and record are the
    same whichever way the labels were made)."""
    (counts,) = driver.collect(stage.name)
    started = time.perf_counter()
    count = int(sum(counts))
    offset = driver.labels[stage.step].offset
    if any(out.step == stage.step for out in driver.plan.outputs):  # its largest id, kept
        offset = driver.prepare_output(stage.step, label_dtype(count), count)
    driver.labels[stage.step] = LabelResult(
        count, label_dtype(count + offset), offset, tuple(int(c) for c in counts)
    )
    driver.merge_stats[stage.step] = {
        "objects": count,
        "face_ids": 0,
        "pairs": 0,
        "seconds": time.perf_counter() - started,
        "bytes": 0,
    }


def face_bases(driver: Driver, stage: Stage) -> Callable[[int], dict[tuple[int, ...], int]]:
    """Face pairs in ids (chunk position << 32 | local id): known before any chunk
    is labelled, so a chunk's faces go as soon as it and its neighbours are done."""
    grid = stage.tasks
    bounds = Roi.from_shape(tuple(int(b) for b in driver.plan.roi.stop), driver.plan.level)

    def bases(position: int) -> dict[tuple[int, ...], int]:
        found = {}
        for idx, _ in chunks_touching(grid[position].read, grid.chunks, bounds):
            neighbour = grid.position(idx)
            if neighbour is not None:
                found[idx] = neighbour << 32
        return found

    return bases


def merge(driver: Driver, stage: Stage) -> None:
    started = time.perf_counter()
    local = next(
        s.name
        for s in driver.plan.stages
        if s.step == stage.step and s.kind in ("label", "segment")
    )
    counts, *found_per_stage = driver.collect(local, *(a for a in stage.after if a != local))
    found = [pairs for stage_found in found_per_stage for pairs in stage_found]
    waited = time.perf_counter() - started
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.uint64)
    pairs = np.concatenate([np.zeros((0, 2), np.uint64), *found])  # none without borders
    # chunk position << 32 | local id  ->  provisional id, consecutive over chunks
    pairs = offsets[(pairs >> np.uint64(32)).astype(np.int64)] + (pairs & np.uint64(2**32 - 1))
    components = resolve_face_components(pairs)
    count = int(offsets[-1]) - len(components.merged)
    offset = driver.prepare_output(stage.step, label_dtype(count), count)
    dtype = label_dtype(count + offset)
    driver.components[stage.step] = components
    driver.labels[stage.step] = LabelResult(count, dtype, offset, tuple(int(c) for c in counts))
    driver.merge_stats[stage.step] = {
        "objects": count,
        "face_ids": len(components.ids),
        "pairs": len(pairs),
        "seconds": time.perf_counter() - started - waited,
        "bytes": components.nbytes + pairs.nbytes,
    }
    driver.record(stage, time.perf_counter() - started)


def relabel_tables(driver: Driver, stage: Stage) -> Callable[[int], RelabelTable]:
    result = driver.labels[stage.step]
    components = driver.components.pop(stage.step)
    firsts = np.concatenate([[1], np.cumsum(result.counts) + 1]).astype(np.int64)

    def table(position: int) -> RelabelTable:
        first, count = int(firsts[position]), result.counts[position]
        return RelabelTable(
            components.within(first, count), first, count, result.offset, result.dtype
        )

    return table
