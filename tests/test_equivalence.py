"""Invariant 1: every output voxel equals the whole-array scipy/scikit-image result in the ROI.

One pipeline exercises every op (and a fused chain, Otsu and labels) on 2D and 3D
images, NGFF 0.4 and 0.5, several chunkings and ROIs that are not chunk-aligned.
"""

from __future__ import annotations

import numpy as np
import pytest
import zarr
from conftest import blobs, same_partition, write_image
from ome_zarr_models.v04.image import Image as ImageV04
from ome_zarr_models.v05.image import Image as ImageV05
from scipy import ndimage
from skimage.filters import threshold_otsu
from user.ops import local_range

from engine import Pipeline, run
from engine.core.geometry import Roi
from engine.io.metadata import read_image
from engine.io.ngff_write import read_ome
from engine.plan.compiler import compile_plan

FIXED = 2000.0


def pipeline(connectivity: int) -> Pipeline:
    img = "image"
    return (
        Pipeline()
        .add("smooth", "gaussian", img, {"kind": "image", "name": "smooth"}, sigma=1.5)
        .add("med", "median", img, {"kind": "image", "name": "med"}, size=3)
        .add(
            "fn",
            "function",
            img,
            {"kind": "image", "name": "fn"},
            function="user.ops:local_range",
            halo=1,
        )
        .add("g2", "gaussian", img, sigma=2.0)
        .add("chain", "median", "g2", {"kind": "image", "name": "chain"}, size=3)
        .add("mask", "threshold", "g2", method="otsu")
        .add(
            "nuclei",
            "label",
            "mask",
            {"kind": "label", "name": "nuclei"},
            connectivity=connectivity,
        )
        .add(
            "fixed",
            "threshold",
            "smooth",
            {"kind": "image", "name": "fixed"},
            method="value",
            value=FIXED,
        )
    )


def expected(img: np.ndarray, roi: tuple[slice, ...], connectivity: int) -> dict[str, np.ndarray]:
    f = img.astype(np.float32)
    smooth = ndimage.gaussian_filter(f, 1.5)
    g2 = ndimage.gaussian_filter(f, 2.0)
    g2_roi = g2[roi]
    mask = g2_roi > threshold_otsu(g2_roi)
    labels, _ = ndimage.label(mask, ndimage.generate_binary_structure(img.ndim, connectivity))
    return {
        "results/smooth": smooth[roi],
        "results/med": ndimage.median_filter(img, 3)[roi],
        "results/fn": local_range(img)[roi],
        "results/chain": ndimage.median_filter(g2, 3)[roi],
        "results/fixed": (smooth > FIXED)[roi].astype(np.uint8),
        "labels/nuclei": labels,
    }


CASES = [
    # (shape, chunks, roi as {axis: (start, stop)}, version, connectivity)
    ((40, 70, 90), (40, 70, 90), {"z": (3, 37), "y": (5, 66), "x": (11, 80)}, "0.5", 1),
    ((40, 70, 90), (16, 32, 32), {"z": (3, 37), "y": (5, 66), "x": (11, 80)}, "0.4", 3),
    ((40, 70, 90), (7, 19, 23), {"z": (0, 40), "y": (1, 70), "x": (2, 89)}, "0.5", 2),
    ((40, 70, 90), (40, 8, 90), None, "0.4", 1),
    ((150, 170), (150, 170), {"y": (7, 140), "x": (3, 161)}, "0.4", 2),
    ((150, 170), (32, 64), {"y": (7, 140), "x": (3, 161)}, "0.5", 1),
    ((150, 170), (17, 29), {"y": (0, 150), "x": (30, 111)}, "0.4", 2),
]


@pytest.mark.parametrize(("shape", "chunks", "roi", "version", "connectivity"), CASES)
def test_outputs_equal_whole_array(tmp_path, scheduler, shape, chunks, roi, version, connectivity):
    img = blobs(shape, seed=sum(shape) + len(chunks))
    path = write_image(tmp_path / "img.zarr", img, chunks, version)
    names = ("z", "y", "x")[-len(shape) :]
    roi_slices = tuple(
        slice(*roi[n]) if roi and n in roi else slice(0, s) for n, s in zip(names, shape)
    )
    result = run(pipeline(connectivity), input=path, roi=roi, scheduler=scheduler)

    want = expected(img, roi_slices, connectivity)
    root = zarr.open_group(str(path), mode="r")
    for out, ref in want.items():
        got = root[f"{out}/s0"][...]
        outside = np.ones(shape, dtype=bool)
        outside[roi_slices] = False
        assert not got[outside].any(), f"{out} wrote outside the ROI"
        if out.startswith("labels/"):
            assert same_partition(got[roi_slices], ref), out
            assert got.max() == ref.max() == result.labels["nuclei"]
            assert got.dtype == np.uint32
        else:
            assert got.dtype == ref.dtype, out
            np.testing.assert_array_equal(got[roi_slices], ref, err_msg=out)


@pytest.mark.parametrize("version", ["0.4", "0.5"])
def test_outputs_are_valid_listed_ngff_with_pyramids(tmp_path, scheduler, version):
    img = blobs((20, 64, 80), seed=3)
    path = write_image(tmp_path / "img.zarr", img, (10, 32, 32), version, levels=3)
    roi = {"z": (2, 19), "y": (3, 61), "x": (5, 77)}
    run(pipeline(1), input=path, roi=roi, scheduler=scheduler)

    group = zarr.open_group(str(path), mode="r")
    model = ImageV05 if version == "0.5" else ImageV04
    image = model.from_zarr(group)
    assert image.labels is not None
    assert read_ome(version, group["labels"].attrs.asdict())["labels"] == ["nuclei"]
    assert sorted(group["results"].attrs["results"]) == ["chain", "fixed", "fn", "med", "smooth"]
    for name in ("smooth", "med", "fn", "chain", "fixed"):
        model.from_zarr(group[f"results/{name}"])
    if version == "0.5":
        assert group["labels/nuclei"].attrs["ome"]["image-label"]["source"] == {"image": "../../"}
        assert tuple(group["labels/nuclei/s0"].metadata.dimension_names) == ("z", "y", "x")
    else:
        assert group["labels/nuclei"].attrs["image-label"]["source"] == {"image": "../../"}

    labels = [group[f"labels/nuclei/s{k}"][...] for k in range(3)]
    assert [lv.shape for lv in labels] == [(20, 64, 80), (20, 32, 40), (20, 16, 20)]
    np.testing.assert_array_equal(labels[1], labels[0][:, ::2, ::2])
    np.testing.assert_array_equal(labels[2], labels[1][:, ::2, ::2])
    smooth0 = group["results/smooth/s0"][...].astype(np.float64)
    smooth1 = group["results/smooth/s1"][...]
    inner = smooth0[2:18, 4:60, 6:76]
    mean = inner.reshape(16, 28, 2, 35, 2).mean(axis=(2, 4)).astype(np.float32)
    np.testing.assert_allclose(smooth1[2:18, 2:30, 3:38], mean, rtol=1e-6)

    provenance = group["labels/nuclei"].attrs["ngff_engine"]
    assert [s["name"] for s in provenance["provenance"]["chain"]] == ["g2", "mask", "nuclei"]
    assert provenance["runs"][0]["roi"] == {"start": [2, 3, 5], "stop": [19, 61, 77], "level": 0}
    assert provenance["max_label"] == int(labels[0].max())
    # no scratch left: each run folder holds only its run record
    for run_dir in (path / "_engine" / "runs").iterdir():
        if run_dir.is_dir():
            assert sorted(p.name for p in run_dir.iterdir()) in (
                ["zarr.json"],
                [".zattrs", ".zgroup"],
            )


@pytest.mark.parametrize(
    ("shape", "roi", "tasks"),
    [
        ((64, 256, 256), None, 4),
        ((64, 256, 256), {"z": (3, 61), "y": (5, 250), "x": (7, 201)}, 2),
        ((2048, 2048), None, 4),
    ],
)
def test_a_reduction_over_one_chunk_splits_into_tasks_with_the_same_result(
    tmp_path, scheduler, shape, roi, tasks
):
    """An image of one chunk: Otsu's passes (and the smoothed input the first stores)
    run in smaller blocks (engine/plan/chains.py, `_reduction_chunks`), four where the
    ROI holds a million voxels for each, blocks that are not the image's chunks and not
    aligned with the ROI; the labels are still scipy's on the whole array."""
    img = blobs(shape, seed=7)
    path = write_image(tmp_path / "img.zarr", img, shape, "0.5")
    names = ("z", "y", "x")[-len(shape) :]
    roi_slices = tuple(
        slice(*roi[n]) if roi and n in roi else slice(0, s) for n, s in zip(names, shape)
    )
    steps = Pipeline().add("g2", "gaussian", "image", sigma=2.0)
    steps = steps.add("mask", "threshold", "g2", method="otsu")
    steps = steps.add("nuclei", "label", "mask", {"kind": "label", "name": "nuclei"})
    box = Roi(tuple(s.start for s in roi_slices), tuple(s.stop for s in roi_slices))
    plan = compile_plan(steps, read_image(str(path)), box)
    passes = [plan.stage(f"mask/reduce-{k}").tasks for k in range(2)]
    assert [len(p) for p in passes] == [tasks, tasks] and passes[0].chunks == passes[1].chunks
    assert passes[0].chunks != shape

    run(steps, input=path, roi=roi, scheduler=scheduler)
    smooth = ndimage.gaussian_filter(img.astype(np.float32), 2.0)[roi_slices]
    want, count = ndimage.label(smooth > threshold_otsu(smooth))
    got = zarr.open_group(str(path), mode="r")["labels/nuclei/s0"][...]
    assert np.array_equal(got[roi_slices], want) and got.max() == count
