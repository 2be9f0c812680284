"""Connected components across chunks equal scipy's on the whole ROI, for random cases.

Stitched per chunk (label, faces, merge, relabel): these images are small enough to be
labelled as one block (engine/plan/stitching.py), which tests/test_label_blocks.py checks.
"""

from __future__ import annotations

import numpy as np
import pytest
import zarr
from conftest import same_partition, write_image
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy import ndimage

from engine import Pipeline, run


@pytest.fixture(autouse=True, scope="module")
def per_chunk_labels():
    """Label per chunk, whatever the image's size: the stitching is what is tested."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("NGFF_ENGINE_LABEL_BLOCK_VOXELS", "0")
        yield


@st.composite
def cases(draw):
    ndim = draw(st.sampled_from([2, 3]))
    shape = tuple(draw(st.integers(4, 30 if ndim == 3 else 60)) for _ in range(ndim))
    chunks = tuple(draw(st.integers(1, s)) for s in shape)
    start = tuple(draw(st.integers(0, s - 1)) for s in shape)
    stop = tuple(draw(st.integers(a + 1, s)) for a, s in zip(start, shape))
    connectivity = draw(st.integers(1, ndim))
    density = draw(st.floats(0.2, 0.7))
    seed = draw(st.integers(0, 2**16))
    return shape, chunks, start, stop, connectivity, density, seed


def label_mask(path, scheduler, connectivity: int = 1, roi: dict | None = None):
    """Run threshold(> 0) -> label on a mask image; the run's result and the label array."""
    p = (
        Pipeline()
        .add("mask", "threshold", method="value", value=0)
        .add("cc", "label", "mask", {"kind": "label", "name": "cc"}, connectivity=connectivity)
    )
    result = run(p, input=path, roi=roi, scheduler=scheduler)
    return result, zarr.open_array(str(path / "labels/cc/s0"))[...]


@settings(max_examples=12, deadline=None, suppress_health_check=list(HealthCheck))
@given(cases())
def test_label_equals_scipy(tmp_path_factory, scheduler, case):
    shape, chunks, start, stop, connectivity, density, seed = case
    mask = np.random.default_rng(seed).random(shape) < density
    path = write_image(
        tmp_path_factory.mktemp("cc") / "m.zarr", mask.astype(np.uint8), chunks, levels=1
    )
    names = ("z", "y", "x")[-len(shape) :]
    roi = {n: (a, b) for n, a, b in zip(names, start, stop)}
    result, got = label_mask(path, scheduler, connectivity, roi)
    window = tuple(slice(a, b) for a, b in zip(start, stop))
    ref, n = ndimage.label(
        mask[window], ndimage.generate_binary_structure(len(shape), connectivity)
    )
    assert same_partition(got[window], ref)
    assert result.labels["cc"] == n == got.max()
    ids = got[window]
    assert set(np.unique(ids[ids > 0]).tolist()) == set(range(1, n + 1))


def test_one_object_spanning_every_chunk(tmp_path, scheduler):
    mask = np.zeros((24, 40, 40), dtype=np.uint8)
    mask[:, 20, :] = 1  # a plane crossing every chunk in z and x
    mask[12, :, 5] = 1  # and a line joining it along y
    path = write_image(tmp_path / "m.zarr", mask, (5, 7, 6), levels=1)
    result, got = label_mask(path, scheduler)
    assert result.labels["cc"] == 1
    assert np.array_equal(got, mask.astype(np.uint32))
    merge = result.merge["cc"]
    assert merge["face_ids"] > 1 and merge["objects"] == 1


def test_merge_holds_only_objects_on_chunk_faces(tmp_path, scheduler):
    """Objects that touch no chunk border never reach the merge: it holds nothing."""
    mask = np.zeros((40, 48), dtype=np.uint8)
    mask[2:8:2, 2:10:2] = 1  # 12 pixels inside the first chunk
    mask[20:25, 0:48] = 1  # one bar across all three chunks in x
    path = write_image(tmp_path / "m.zarr", mask, (40, 16), levels=1)
    result, got = label_mask(path, scheduler)
    assert result.labels["cc"] == 13
    merge = result.merge["cc"]
    assert merge["face_ids"] == 3 and merge["pairs"] == 2


def test_more_objects_than_uint16_holds(tmp_path, scheduler):
    mask = np.zeros((600, 600), dtype=np.uint8)
    mask[::2, ::2] = 1  # 90,000 isolated pixels, split over 6 x 5 chunks
    path = write_image(tmp_path / "m.zarr", mask, (100, 120), levels=1)
    result, got = label_mask(path, scheduler)
    ref, n = ndimage.label(mask)
    assert n == 90_000 > np.iinfo(np.uint16).max
    assert result.labels["cc"] == n and got.dtype == np.uint32
    assert result.merge["cc"]["bytes"] == 0  # no object touches a chunk border
    assert same_partition(got, ref)
    assert np.array_equal(np.unique(got), np.arange(n + 1))
