"""Stages whose chunks give partial results the driver combines into one thing: a
measurement table ("measure": per-label sums, bounding boxes and intensities), a
contingency table ("evaluate": the label output against a reference), or training
samples for a model ("train": the features of annotated voxels; one worker fits).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from engine.core.errors import EngineError
from engine.core.grid import ChunkTask
from engine.io.location import Where
from engine.worker.chain import chain_output, read_source, time_slices
from tasks import OPS
from tasks.evaluate import Counts, combine_counts, pair_counts
from tasks.measure import combine_partials, measure_block

if TYPE_CHECKING:
    from engine.plan.types import Stage
    from engine.worker.driver import Driver
    from tasks.classifier import Samples, TrainedClassifier


def run_measure(root: Where, stage: Stage, task: ChunkTask, extra: Any, common: dict) -> dict:
    """Partial measurements of one chunk: per label, count, coordinate sums, bbox and
    intensity sum/min/max (tasks/measure.py), in global pixel coordinates of the level.

    Labels are read from the label step's output within the chunk's write box; the
    intensity (image channel or a step's chain) over the same box. With a time axis,
    each time point is measured and the rows combined (label ids never repeat across
    time points in a label output of op 'label').
    """
    assert stage.labels is not None
    spatial, ctx, values = common["spatial"], common["context"], common["values"]
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


def run_train(
    root: Where, stage: Stage, task: ChunkTask, extra: Any, common: dict
) -> Samples | None:
    """Training samples of one chunk: the features of its annotated voxels (the chain's
    last link maps a block to features, with their halo), their classes and global voxel
    indices, capped per class (tasks/classifier.py)."""
    from tasks.classifier import block_samples, combine_samples

    assert stage.labels is not None
    spatial, ctx, values = common["spatial"], common["context"], common["values"]
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
    from tasks.classifier import check_samples, combine_samples

    params = _train_params(stage)
    try:
        return check_samples(combine_samples(parts, params), params)
    except ValueError as exc:
        raise EngineError(f"step '{stage.step}': {exc}") from None


def fit_model(stage: Stage, samples: Samples) -> TrainedClassifier:
    from tasks.classifier import fit_classifier

    return fit_classifier(samples, _train_params(stage))


def _train_params(stage: Stage) -> Any:
    link = stage.chain[-1]
    return OPS[link.op].params.model_validate(link.params)


def run_evaluate(root: Where, stage: Stage, task: ChunkTask, extra: Any, common: dict) -> Counts:
    """The contingency table of one chunk: the label output (`stage.labels`) against the
    reference (`stage.source`), both read over the chunk's write box."""
    assert stage.labels is not None and stage.source is not None
    labels = read_source(root, stage.labels, task.write)
    return pair_counts(labels, read_source(root, stage.source, task.write))


def combine_measure(driver: Driver, stage: Stage) -> None:
    """Per-chunk partials combined into one row per object; the run writes the table."""
    parts = driver.collect(stage.name)[0]
    started = time.perf_counter()
    rows = sum(len(p["label"]) for p in parts)
    combined = combine_partials(parts) if parts else None
    if combined is None:
        raise EngineError(f"step '{stage.step}': the ROI is empty: nothing to measure")
    driver.measurements[stage.step] = combined
    driver.merge_stats[stage.step] = {
        "partial_rows": rows,
        "objects": len(combined["label"]),
        "seconds": time.perf_counter() - started,
        "partial_bytes": sum(v.nbytes for p in parts for v in p.values()),
        "table_bytes": sum(v.nbytes for v in combined.values()),
    }


def combine_train(driver: Driver, stage: Stage) -> None:
    """The chunks' samples combined here (a barrier); one worker fits the model."""
    parts = driver.collect(stage.name)[0]
    started = time.perf_counter()
    samples = combine_training(stage, parts)
    # the fit takes seconds (10 s for 50 trees on the sample's scribbles) after the
    # chunks' bar completes: a bar of its own shows it running, with its time
    fitted = driver.progress(f"{stage.step}/fit", 1) if driver.progress else None
    driver.models[stage.step] = driver.on_worker(fit_model, stage, samples)
    if fitted is not None:
        fitted(1)
    driver.merge_stats[stage.step] = {
        "samples": len(samples.classes),
        "sample_bytes": samples.features.nbytes,
        "seconds": time.perf_counter() - started,
    }


def combine_evaluate(driver: Driver, stage: Stage) -> None:
    """Per-chunk contingency tables added up into one; the run scores it."""
    driver.evaluations[stage.step] = combine_counts(driver.collect(stage.name)[0])
