"""What one chunk task does on a worker: read, run the fused chain, write.

Plain functions over zarr and numpy, no dask: the executor ships them to
workers, and tests call them directly. A task writes only its own box of its
own chunk, so no two tasks of a run ever write the same chunk.

Work-space arrays have an optional leading time axis; ops only ever see one
spatial block (one time point).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import numpy as np

from engine.core.errors import EngineError
from engine.core.geometry import Roi, chunk_roi
from engine.core.grid import ChunkTask
from engine.io.arrays import direct_files, open_array, read_array, write_array
from engine.io.chunk_cache import read_cached
from engine.io.location import Where
from engine.plan.compiler import (
    Link,
    Source,
    Stage,
    chain_boxes,
    face_array_path,
    face_box,
    face_planes,
)
from tasks import OPS, Context
from tasks.classifier import (
    Samples,
    TrainedClassifier,
    block_samples,
    check_samples,
    combine_samples,
    fit_classifier,
)
from tasks.evaluate import Counts, pair_counts
from tasks.instance import matching_pairs, number_core
from tasks.label import FaceComponents, crossing_pairs, final_ids
from tasks.measure import combine_partials, measure_block


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


def write_target(root: Where, path: str, box: Roi, data: np.ndarray) -> None:
    """Write a box of an output or scratch array (engine/io/arrays.py)."""
    write_array(root, path, box, data)


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


def _stack(parts: list[np.ndarray], spatial: Sequence[int], box: Roi) -> np.ndarray:
    """Per-time-point blocks back into one work-space block."""
    return parts[0] if len(spatial) == box.ndim else np.stack(parts)


def run_blockwise(root: Where, stage: Stage, read: Roi, write: Roi, spatial, ctx, values) -> int:
    parts = [block for _, block in chain_output(root, stage, read, write, spatial, ctx, values)]
    assert stage.target is not None
    write_target(root, stage.target, write, _stack(parts, spatial, write))
    return write.size


def run_reduce(root: Where, stage: Stage, read: Roi, write: Roi, spatial, ctx, values) -> dict:
    """Partials of one reduction pass, per time point."""
    *chain, last = stage.chain
    op = OPS[last.op]
    params = op.params.model_validate(last.params)
    reduction = op.reduction(params)
    prefix = Stage(**{**stage.__dict__, "chain": tuple(chain)})
    previous = values.get(f"{last.step}/reduce-{stage.pass_no - 1}", {})
    partials, blocks = {}, []
    for t, block in chain_output(root, prefix, read, write, spatial, ctx, values):
        partials[t] = reduction.map(block, params, stage.pass_no, previous.get(t))
        blocks.append(block)
    if stage.target is not None:
        write_target(root, stage.target, write, _stack(blocks, spatial, write))
    return partials


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
    return _stack(parts, spatial, box), count


def run_label(root: Where, stage: Stage, task: ChunkTask, spatial, ctx, values) -> int:
    """Local labels 1..n of one chunk (unique across its time points); returns n.

    Besides the labels, the chunk's first and last plane along each spatial axis go to
    the face arrays, where the face pass finds them cheaply.
    """
    read, write = task.read, task.write
    block, count = number_time_points(
        (
            (labels, int(labels.max(initial=0)))
            for _, labels in chain_output(root, stage, read, write, spatial, ctx, values)
        ),
        spatial,
        write,
    )
    assert stage.target is not None
    write_target(root, stage.target, write, block)
    for axis in spatial:
        path = face_array_path(stage.target, axis)
        write_target(root, path, face_box(write, task.index, axis, 0), block.take([0], axis))
        write_target(root, path, face_box(write, task.index, axis, 1), block.take([-1], axis))
    return count


def run_faces(
    root: Where,
    stage: Stage,
    task: ChunkTask,
    spatial: Sequence[int],
    chunks: Sequence[int],
    bases: dict[tuple[int, ...], int],
) -> np.ndarray:
    """Pairs of provisional ids touching across this chunk's upper faces.

    Reads, per axis, the chunk's last plane and the next chunks' first planes (widened by
    one voxel along the other axes, for diagonal neighbours) from the face arrays.
    """
    assert stage.source is not None
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


def run_segment(root: Where, stage: Stage, task: ChunkTask, spatial, ctx, values) -> int:
    """Run the segmenter on the chunk grown by the overlap; keep provisional ids 1..n for
    the objects of the chunk's own voxels (unique across its time points); returns n.

    The chunk's own labels go to the local array; the labels it saw in the band of
    twice the overlap around each border it shares with a chunk of the ROI go to the
    face arrays (zero where the band leaves the ROI), for the match pass.
    """
    assert stage.target is not None and stage.region is not None
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


def run_match(
    root: Where, stage: Stage, task: ChunkTask, spatial: Sequence[int], bases: dict
) -> np.ndarray:
    """Pairs of provisional ids that are one object across this chunk's upper borders:
    per axis, this chunk's band around the border against the upper neighbour's view of
    the same band (adjacent faces in the face array), matched by IoU."""
    assert stage.source is not None
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


def run_relabel(root: Where, stage: Stage, write: Roi, table: np.ndarray) -> int:
    assert stage.source is not None and stage.target is not None
    local = read_source(root, stage.source, write)
    write_target(root, stage.target, write, table[local])
    return write.size


def run_measure(root: Where, stage: Stage, task: ChunkTask, spatial, ctx, values) -> dict:
    """Partial measurements of one chunk: per label, count, coordinate sums, bbox and
    intensity sum/min/max (tasks/measure.py), in global pixel coordinates of the level.

    Labels are read from the label step's output within the chunk's write box; the
    intensity (image channel or a step's chain) over the same box. With a time axis,
    each time point is measured and the rows combined (label ids never repeat across
    time points in a label output of op 'label').
    """
    assert stage.labels is not None
    write = task.write
    labels = read_source(root, stage.labels, write)
    intensity: dict[int | None, np.ndarray] = {}
    if stage.source is not None:
        intensity = dict(chain_output(root, stage, task.read, write, spatial, ctx, values))
    offset = [int(write.start[a]) for a in spatial]
    parts = [
        measure_block(labels[index], intensity.get(t), offset)
        for t, index in time_slices(write, spatial)
    ]
    return combine_partials(parts)


def run_train(root: Where, stage: Stage, task: ChunkTask, spatial, ctx, values) -> Samples | None:
    """Training samples of one chunk: the features of its annotated voxels (the chain's
    last link maps a block to features, with their halo), their classes and global voxel
    indices, capped per class (tasks/classifier.py)."""
    assert stage.labels is not None
    write = task.write
    annotations = read_source(root, stage.labels, write)
    params = _train_params(stage)
    extent = tuple(int(s) for s in stage.labels.bounds.stop)
    blocks = chain_output(root, stage, task.read, write, spatial, ctx, values)
    parts = []
    for (t, features), (_, index) in zip(blocks, time_slices(write, spatial), strict=True):
        labels = annotations[index]
        origin = [int(a) for a in write.start]
        if t is not None:  # one time point: a block of extent 1 along t
            origin[0] = t
            features, labels = features[None], labels[None]
        parts.append(block_samples(features, labels, origin, extent, params))
    return combine_samples(parts, params)


def combine_training(stage: Stage, parts: Sequence[Samples | None]) -> Samples:
    """The chunks' samples as one capped set, checked to be able to train a classifier."""
    params = _train_params(stage)
    try:
        return check_samples(combine_samples(parts, params), params)
    except ValueError as exc:
        raise EngineError(f"step '{stage.step}': {exc}") from None


def fit_model(stage: Stage, samples: Samples) -> TrainedClassifier:
    return fit_classifier(samples, _train_params(stage))


def _train_params(stage: Stage) -> Any:
    link = stage.chain[-1]
    return OPS[link.op].params.model_validate(link.params)


def run_evaluate(root: Where, stage: Stage, task: ChunkTask) -> Counts:
    """The contingency table of one chunk: the label output (`stage.labels`) against the
    reference (`stage.source`), both read over the chunk's write box."""
    assert stage.labels is not None and stage.source is not None
    labels = read_source(root, stage.labels, task.write)
    return pair_counts(labels, read_source(root, stage.source, task.write))


def run_pyramid(root: Where, stage: Stage, read: Roi, write: Roi, factors: Sequence[int]) -> int:
    """One chunk of a pyramid level from the level below: every f-th voxel for labels
    (read chunk by chunk, never the whole box), the mean over f-blocks for images."""
    assert stage.source is not None and stage.target is not None
    if stage.connectivity == 0:
        result = read_source(root, stage.source, read, step=factors)
    else:
        result = block_mean(read_source(root, stage.source, read), factors)
    write_target(root, stage.target, write, result[tuple(slice(0, int(s)) for s in write.shape)])
    return write.size


def block_mean(data: np.ndarray, factors: Sequence[int]) -> np.ndarray:
    """Mean over blocks of `factors`; a partial block at the edge averages what it has."""
    out = data.astype(np.float64)
    for axis, f in enumerate(factors):
        if f == 1:
            continue
        starts = np.arange(0, out.shape[axis], f)
        counts = np.minimum(starts + f, out.shape[axis]) - starts
        shape = [1] * out.ndim
        shape[axis] = len(starts)
        out = np.add.reduceat(out, starts, axis=axis) / counts.reshape(shape)
    if np.issubdtype(data.dtype, np.integer) or data.dtype == np.bool_:
        return np.rint(out).astype(data.dtype)
    return out.astype(data.dtype)
