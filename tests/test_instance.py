"""Instance segmentation stitched across chunks: objects crossing chunk borders come out
as single objects with consecutive ids, as the same segmenter gives on the whole ROI."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import zarr
from conftest import same_partition, write_image
from scipy import ndimage

from engine import Pipeline, run
from engine.core.errors import ConfigError, EngineError
from engine.core.geometry import Roi
from engine.execute.executor import TaskFailed
from engine.runs.planning import make_plan
from tasks.instance import seeded_watershed

OVERLAP = 12
MIN_DISTANCE = 3


def spheres(
    shape: tuple[int, ...], n: int, radius: int, spacing: float, seed: int
) -> tuple[np.ndarray, list[np.ndarray]]:
    """A mask of `n` balls with centres at least `spacing` x radius apart (below 2 they
    overlap: touching nuclei that only the watershed separates), and the centres."""
    rng = np.random.default_rng(seed)
    centres: list[np.ndarray] = []
    while len(centres) < n:
        c = np.array([rng.integers(radius, s - radius) for s in shape])
        if all(np.linalg.norm(c - o) >= spacing * radius for o in centres):
            centres.append(c)
    grid = np.indices(shape)
    mask = np.zeros(shape, dtype=bool)
    for c in centres:
        mask |= sum((g - ci) ** 2 for g, ci in zip(grid, c)) <= radius**2
    return mask.astype(np.uint8), centres


def object_ious(got: np.ndarray, ref: np.ndarray) -> dict[int, tuple[int, float]]:
    """For each object of `ref`: the object of `got` overlapping it most, and their IoU."""
    fg = (got > 0) | (ref > 0)
    pairs, inter = np.unique(np.stack([ref[fg], got[fg]]), axis=1, return_counts=True)
    area_ref, area_got = np.bincount(ref.ravel()), np.bincount(got.ravel())
    best: dict[int, tuple[int, float]] = {}
    for (r, g), k in zip(pairs.T, inter):
        if r == 0 or g == 0:
            continue
        iou = k / (area_ref[r] + area_got[g] - k)
        if iou > best.get(int(r), (0, 0.0))[1]:
            best[int(r)] = (int(g), float(iou))
    return best


def crossing(labels: np.ndarray, chunks: tuple[int, ...]) -> int:
    """How many objects have voxels in more than one chunk."""
    coords = np.nonzero(labels)
    chunk_id = np.ravel_multi_index(
        tuple(c // k for c, k in zip(coords, chunks)),
        tuple(-(-s // k) for s, k in zip(labels.shape, chunks)),
    )
    pairs = np.unique(np.stack([labels[coords], chunk_id]), axis=1)
    return int((np.bincount(pairs[0]) > 1).sum())


def instance_pipeline(before: Pipeline | None = None, input: str = "image", **params) -> Pipeline:
    """`before` (if any) and an instance step 'nuc' on `input` writing labels/nuc."""
    output = {"kind": "label", "name": "nuc"}
    return (before or Pipeline()).add("nuc", "instance", input, output, **params)


CASES = [
    # (shape, axis names, chunks, roi)
    ((32, 64, 64), ("z", "y", "x"), (16, 32, 32), None),
    ((32, 64, 64), ("z", "y", "x"), (12, 20, 24), {"z": (3, 29), "y": (5, 60), "x": (7, 58)}),
    ((32, 64, 64), ("z", "y", "x"), (32, 9, 64), {"y": (2, 63)}),
    ((3, 96, 96), ("t", "y", "x"), (2, 24, 40), {"y": (4, 90), "x": (0, 93)}),
]


@pytest.mark.parametrize(("shape", "names", "chunks", "roi"), CASES)
def test_objects_crossing_chunk_borders_are_single_objects(
    tmp_path: Path, scheduler: str, shape, names, chunks, roi
) -> None:
    has_time = names[0] == "t"
    spatial = shape[1:] if has_time else shape
    frames = [spheres(spatial, 25, 5, 1.5, seed=t) for t in range(shape[0] if has_time else 1)]
    mask = np.stack([m for m, _ in frames]) if has_time else frames[0][0]
    path = write_image(tmp_path / "m.zarr", mask, chunks, names=names, levels=1)
    result = run(
        instance_pipeline(overlap=OVERLAP, min_distance=MIN_DISTANCE),
        input=path,
        roi=roi,
        scheduler=scheduler,
    )
    got = zarr.open_array(str(path / "labels/nuc/s0"))[...]
    window = tuple(
        slice(*roi[n]) if roi and n in roi else slice(0, s) for n, s in zip(names, shape)
    )
    outside = np.ones(shape, dtype=bool)
    outside[window] = False
    assert not got[outside].any()
    got = got[window]

    # the same watershed on the whole ROI (per time point, ids following each other)
    ref = np.zeros(got.shape, dtype=np.int64)
    for t in range(shape[0]) if has_time else [None]:
        index = (t,) if has_time else ()
        ws = seeded_watershed(mask[window][index], MIN_DISTANCE, (1.0,) * len(spatial))
        ref[index] = np.where(ws > 0, ws + ref.max(), 0)
    n = int(ref.max())
    spatial_chunks = chunks[1:] if has_time else chunks
    assert sum(crossing(r, spatial_chunks) for r in (ref if has_time else [ref])) >= 5

    assert result.labels["nuc"] == n == got.max()
    assert set(np.unique(got).tolist()) == set(range(n + 1))
    best = object_ious(got, ref)
    assert len(best) == n and len({g for g, _ in best.values()}) == n
    assert min(iou for _, iou in best.values()) >= 0.9

    # every ball whose centre is in the ROI is one object, and no other ball's
    centres = np.zeros(shape, dtype=np.int64)
    for t, (_, points) in enumerate(frames):
        for c in points:
            box = ((t,) if has_time else ()) + tuple(slice(p - 2, p + 3) for p in c)
            centres[box] = centres.max() + 1
    inside = [k for k in np.unique(centres[window]) if k]
    whole = [k for k in inside if (centres[window] == k).sum() == (centres == k).sum()]
    seen = [np.unique(got[centres[window] == k]) for k in whole]
    assert all(len(ids) == 1 and ids[0] for ids in seen)
    assert len({int(ids[0]) for ids in seen}) == len(whole) > 10


def test_user_segmenter_by_import_path(tmp_path: Path, scheduler: str) -> None:
    """A user's segmenter after a filter: balls apart from each other, so the whole-ROI
    result is exact connected components, and the stitched one must equal it."""
    mask, _ = spheres((30, 70, 70), 20, 5, 2.6, seed=7)
    img = mask.astype(np.uint16) * 1000
    path = write_image(tmp_path / "m.zarr", img, (10, 24, 24), levels=1)
    roi = {"z": (1, 29), "y": (3, 68), "x": (2, 70)}
    pipeline = instance_pipeline(
        Pipeline().add("smooth", "gaussian", "image", sigma=1.0),
        "smooth",
        segmenter="user_segmenters:components",
        overlap=[6, 12, 12],
        kwargs={"level": 500},
    )
    result = run(pipeline, input=path, roi=roi, scheduler=scheduler)
    window = (slice(1, 29), slice(3, 68), slice(2, 70))
    smooth = ndimage.gaussian_filter(img.astype(np.float32), 1.0)
    ref, n = ndimage.label(smooth[window] > 500)
    got = zarr.open_array(str(path / "labels/nuc/s0"))[...][window]
    assert crossing(ref, (10, 24, 24)) >= 5
    assert result.labels["nuc"] == n == got.max()
    assert same_partition(got, ref)


def test_resume_after_a_failed_chunk_redoes_only_that_chunk(tmp_path: Path, scheduler: str) -> None:
    mask, _ = spheres((32, 64, 64), 12, 5, 2.5, seed=3)
    mask[24, 48, 48] = 2  # deep in chunk (1, 1, 1): no other chunk's overlap reaches it
    path = write_image(tmp_path / "m.zarr", mask, (16, 32, 32), levels=1)
    fixed = tmp_path / "fixed"
    pipeline = instance_pipeline(
        segmenter="user_segmenters:components_unless",
        overlap=6,
        kwargs={"value": 2, "unless": str(fixed)},
    )
    with pytest.raises(TaskFailed, match="step 'nuc'.*bad voxel value 2"):
        run(pipeline, input=path, scheduler=scheduler)
    fixed.touch()
    result = run(pipeline, input=path, scheduler=scheduler, resume=True)
    segment = next(s for s in result.stages if s.name == "nuc/segment")
    assert segment.skipped >= 1 and segment.skipped + segment.done == 8
    ref, n = ndimage.label(mask > 0)
    got = zarr.open_array(str(path / "labels/nuc/s0"))[...]
    assert result.labels["nuc"] == n == got.max()
    assert same_partition(got, ref)


def test_a_segmenter_that_returns_no_labels_fails_clearly(tmp_path: Path, scheduler: str) -> None:
    mask, _ = spheres((16, 32, 32), 3, 4, 2.5, seed=1)
    path = write_image(tmp_path / "m.zarr", mask, (8, 16, 16), levels=1)
    pipeline = instance_pipeline(segmenter="user_segmenters:float_labels", overlap=4)
    with pytest.raises(EngineError, match="step 'nuc'.*float_labels returned float32, not"):
        run(pipeline, input=path, scheduler=scheduler)


def test_plan_reads_each_chunk_grown_by_the_overlap_within_the_roi(tmp_path: Path) -> None:
    path = write_image(tmp_path / "m.zarr", np.zeros((20, 40, 40), np.uint8), (10, 16, 16))
    roi = {"z": (2, 20), "y": (5, 40), "x": (0, 30)}
    _, plan = make_plan(instance_pipeline(overlap=[2, 4, 4]), path, roi)
    kinds = [s.kind for s in plan.stages if s.step == "nuc"]
    assert kinds == ["segment", "match", "merge", "relabel", "pyramid"]
    segment = plan.stage("nuc/segment")
    region = Roi((2, 5, 0), (20, 40, 30), 0)
    for task in segment.tasks:
        assert task.read == task.write.grow((2, 4, 4)).intersect(region)
    first = segment.tasks[0]
    assert first.write == Roi((2, 5, 0), (10, 16, 16), 0)
    assert first.read == Roi((2, 5, 0), (12, 20, 20), 0)


def bad(params: dict) -> list[dict]:
    return [
        {
            "name": "nuclei",
            "op": "instance",
            "params": params,
            "output": {"kind": "label", "name": "n"},
        }
    ]


@pytest.mark.parametrize(
    ("params", "words"),
    [
        ({"segmenter": "watershedd"}, ["params.segmenter", "unknown segmenter 'watershedd'"]),
        ({"segmenter": "no_such_mod:f"}, ["params.segmenter", "no_such_mod"]),
        ({"segmenter": "user_segmenters:nope"}, ["params.segmenter", "'nope'"]),
        ({"overlap": -3}, ["params.overlap", "at least 1", "-3"]),
        ({"overlap": [4, -2, 4]}, ["params.overlap", "at least 1"]),
        ({"iou_threshold": 0}, ["params.iou_threshold", "greater than 0"]),
        ({"iou_threshold": 1.5}, ["params.iou_threshold", "less than or equal to 1"]),
        ({"kwargs": {"level": 1}}, ["params", "kwargs", "not watershed"]),
    ],
)
def test_bad_params_name_step_and_field(params: dict, words: list[str]) -> None:
    with pytest.raises(ConfigError) as info:
        Pipeline.build({"steps": bad(params)})
    message = str(info.value)
    assert len(message.splitlines()) == 1
    for word in ["step 'nuclei'", *words]:
        assert word in message


def test_per_axis_overlap_must_fit_the_image(tmp_path: Path) -> None:
    path = write_image(tmp_path / "m.zarr", np.zeros((8, 16, 16), np.uint8), (8, 8, 8))
    with pytest.raises(ConfigError, match="step 'nuclei': overlap has 2 values but the image"):
        make_plan(Pipeline.build({"steps": bad({"overlap": [4, 4]})}), path, None)
