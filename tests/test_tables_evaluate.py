"""Evaluation scores: per-chunk contingency tables combined on the driver equal a
whole-array numpy computation, on crafted cases with known answers, on the sample
against its truth, for unaligned ROIs and several chunkings."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import zarr
from conftest import read_table, write_image
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import ndimage
from scores_oracle import assert_same, labels_of, nuclei_pipeline, oracle

from engine import Pipeline, run
from engine.io.metadata import read_image
from engine.io.ngff_write import create_image, image_label_json, list_in_parent
from tasks.evaluate import Scores, combine_counts, pair_counts, scores


def blocks(shape: tuple[int, ...], step: tuple[int, ...]):
    for corner in np.ndindex(*(-(-s // k) for s, k in zip(shape, step))):
        yield tuple(slice(c * k, (c + 1) * k) for c, k in zip(corner, step))


def test_known_answer() -> None:
    ref = np.zeros((10, 12), dtype=np.uint32)
    pred = np.zeros((10, 12), dtype=np.uint16)
    ref[0:4, 0:4] = 1  # 16 voxels
    pred[0:4, 0:3] = 7  # 12 inside ref 1: IoU 12/16, a match
    ref[6:10, 0:4] = 2  # 16 voxels
    pred[6:8, 0:4] = 3  # 8 of ref 2: IoU 0.5 exactly, a match
    pred[8:10, 0:4] = 4  # the other half: IoU 0.5 too, but ref 2 is taken by 3 (lower id)
    ref[0:2, 8:12] = 5  # no prediction: a false negative
    pred[5, 10] = 9  # no reference: a false positive
    got = scores(pair_counts(pred, ref))
    assert (got.true_positives, got.predicted_objects, got.reference_objects) == (2, 4, 3)
    assert (got.overlap_voxels, got.predicted_voxels, got.reference_voxels) == (28, 29, 40)
    assert got.precision == 0.5 and got.recall == 2 / 3 and got.f1 == 4 / 7
    assert got.dice == 56 / 69 and got.iou == 28 / 41
    assert_same(got, oracle(pred, ref))


def test_identical_and_empty() -> None:
    labels, n = ndimage.label(np.random.default_rng(1).random((20, 20)) > 0.7)
    same = scores(pair_counts(labels, labels * 3))  # other ids, same objects
    assert same.dice == same.iou == same.f1 == 1.0 and same.true_positives == n
    empty = scores(pair_counts(np.zeros((4, 4), int), np.zeros((4, 4), int)))
    assert math.isnan(empty.dice) and math.isnan(empty.precision)
    assert empty.to_json()["dice"] is None and empty.to_json()["true_positives"] == 0
    only_ref = scores(pair_counts(np.zeros((4, 4), int), np.eye(4, dtype=int)))
    assert only_ref.dice == 0.0 and only_ref.recall == 0.0 and math.isnan(only_ref.precision)


def test_ids_beyond_32_bits() -> None:
    ref = np.array([[1, 1, 0], [2, 2, 2]], dtype=np.uint64)
    pred = np.array([[2**40, 2**40, 5], [2**33, 2**33, 0]], dtype=np.uint64)
    got = scores(pair_counts(pred, ref))
    assert got.true_positives == 2 and got.predicted_objects == 3
    assert_same(got, oracle(pred, ref))


@settings(max_examples=40, deadline=None)
@given(
    st.integers(0, 2**31),
    st.sampled_from([(23, 31), (9, 14, 17)]),
    st.integers(2, 9),
)
def test_block_tables_combine_to_the_whole(seed: int, shape: tuple[int, ...], step: int) -> None:
    rng = np.random.default_rng(seed)
    ref, _ = ndimage.label(ndimage.gaussian_filter(rng.random(shape), 1.5) > 0.5)
    noisy = ndimage.gaussian_filter(rng.random(shape), 1.5) + 0.02 * rng.random(shape)
    pred, _ = ndimage.label(noisy > 0.5)
    parts = [pair_counts(pred[b], ref[b]) for b in blocks(shape, (step,) * len(shape))]
    rng.shuffle(parts)
    assert_same(scores(combine_counts(parts)), oracle(pred, ref))


# --- through the engine ------------------------------------------------------------------


SAMPLE_CASES = [
    # chunks, roi (None: the whole image)
    ((8, 32, 32), {"z": (1, 15), "y": (5, 90), "x": (3, 77)}),
    ((5, 23, 41), {"z": (2, 13), "y": (11, 96), "x": (0, 70)}),
    ((5, 23, 41), None),
]


@pytest.mark.parametrize(("chunks", "roi"), SAMPLE_CASES)
def test_scores_on_the_sample_equal_the_whole_array(tmp_path, sample_image, scheduler, chunks, roi):
    path = sample_image((16, 96, 96), chunks, "0.5", copy_to=tmp_path / "s.zarr")
    result = run(nuclei_pipeline(), input=path, roi=roi, scheduler=scheduler)
    bounds = roi or {"z": (0, 16), "y": (0, 96), "x": (0, 96)}
    window = tuple(slice(*bounds[n]) for n in ("z", "y", "x"))
    want = oracle(labels_of(path, "nuclei")[window], labels_of(path, "truth")[window])
    got = result.evaluations["nuclei_eval"]
    assert_same(got, want)
    assert want.true_positives > 10 and 0.8 < want.dice < 1  # a real test, not a trivial one
    table = read_table(path, "nuclei_eval")
    key = ",".join(f"{n}={a}:{b}" for n, (a, b) in bounds.items())
    assert list(table.obs_names) == [key] and table.obs_names.name == "roi"
    assert_same(Scores.from_row(list(table.var_names), table.X[0]), want)
    assert result.to_json()["evaluations"]["nuclei_eval"]["true_positives"] == want.true_positives


def add_labels(path: Path, name: str, data: np.ndarray, chunks: tuple[int, ...]) -> None:
    """A label image `labels/<name>` of `data` (one level) beside the image at `path`."""
    meta = read_image(path)
    root = zarr.open_group(str(path), mode="r+")
    level = meta.levels[0]
    spec = type(level)(
        level.path, data.shape, chunks, data.dtype.str, level.scale, level.translation
    )
    group = create_image(
        root,
        f"labels/{name}",
        version=meta.version,
        axes=meta.axes,
        levels=[spec],
        dtype=data.dtype,
        name=name,
        method="nearest",
        extra_ome=image_label_json(meta.version),
    )
    group[level.path][...] = data
    list_in_parent(root, "label", name, meta.version)


def test_known_answer_across_chunks(tmp_path, scheduler):
    """Objects cut by chunk borders (chunks 8x8): the same answer as by hand."""
    img = np.zeros((20, 24), dtype=np.uint16)
    ref = np.zeros((20, 24), dtype=np.uint32)
    img[2:10, 2:8] = 1000  # one predicted object of 48 voxels ...
    ref[2:10, 2:10] = 4  # ... inside a reference of 64: IoU 0.75, a match
    img[12:16, 4:20] = 1000  # 64 voxels ...
    ref[12:14, 4:20] = 8  # ... half of them: IoU 0.5, a match
    ref[14:16, 4:20] = 9  # the other half: IoU 0.5 too, but the prediction is taken
    img[0:2, 20:24] = 1000  # 8 voxels, no reference: a false positive
    path = write_image(tmp_path / "img.zarr", img, (8, 8), "0.4", levels=1)
    add_labels(path, "ref", ref, (8, 8))
    p = (
        Pipeline()
        .add("mask", "threshold", method="value", value=500)
        .add("cells", "label", "mask", {"kind": "label", "name": "cells"})
        .add("eval", "evaluate", "cells", {"kind": "table", "name": "e"}, reference="ref")
    )
    got = run(p, input=path, scheduler=scheduler).evaluations["e"]
    assert (got.true_positives, got.predicted_objects, got.reference_objects) == (2, 3, 3)
    assert (got.overlap_voxels, got.predicted_voxels, got.reference_voxels) == (112, 120, 128)
    assert got.precision == got.recall == got.f1 == 2 / 3
    assert got.dice == 224 / 248 and got.iou == 112 / 136


def test_reference_is_a_step_of_the_pipeline(tmp_path, sample_image, scheduler):
    path = sample_image((12, 64, 64), (6, 32, 32), "0.4", copy_to=tmp_path / "s.zarr")
    p = (
        nuclei_pipeline(reference="coarse")
        .add("coarse_smooth", "gaussian", sigma=2.5)
        .add("coarse_mask", "threshold", "coarse_smooth", method="otsu")
        .add("coarse", "label", "coarse_mask", {"kind": "label", "name": "coarse"})
    )
    roi = {"z": (1, 11), "y": (3, 61), "x": (7, 64)}
    result = run(p, input=path, roi=roi, scheduler=scheduler)
    window = (slice(1, 11), slice(3, 61), slice(7, 64))
    want = oracle(labels_of(path, "nuclei")[window], labels_of(path, "coarse")[window])
    assert_same(result.evaluations["nuclei_eval"], want)
    attrs = zarr.open_group(str(path / "tables/nuclei_eval"), mode="r").attrs.asdict()
    assert attrs["region"] == {"path": "../labels/nuclei"}
    assert attrs["reference"] == {"path": "../labels/coarse"}
    assert attrs["ngff_engine"]["provenance"]["reference"] == "labels/coarse"
