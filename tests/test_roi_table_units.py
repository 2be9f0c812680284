"""ROI tables as units of work: `roi_table=` runs the pipeline once per ROI of the table,
on one cluster, writing inside each ROI only, label ids unique across ROIs, and the ROI
of every object in the measurement table."""

from __future__ import annotations

import warnings
from pathlib import Path

import anndata
import numpy as np
import pytest
import zarr
from conftest import blobs, same_partition
from scipy import ndimage
from skimage.filters import threshold_otsu
from test_plates import _pipeline

import engine
from engine.cli.commands import main
from engine.core.errors import ConfigError
from engine.core.pipeline import Pipeline
from engine.runs.units import UnitsResult

SHAPE = (12, 64, 96)
SCALE = (2.0, 0.5, 0.5)
# FOVs in pixels (z, y, x), with gaps between them so "nothing outside" means something
FOVS = {
    "FOV_1": ((0, 12), (0, 30), (0, 45)),
    "FOV_2": ((0, 12), (0, 30), (50, 96)),
    "FOV_3": ((2, 10), (34, 64), (5, 90)),
}


def _ngio_image(tmp_path: Path, fovs: dict) -> tuple[Path, np.ndarray]:
    from ngio import Roi as NgioRoi
    from ngio import create_ome_zarr_from_array
    from ngio.tables import RoiTable

    data = blobs(SHAPE, seed=11)
    path = tmp_path / "fovs.zarr"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        container = create_ome_zarr_from_array(
            store=str(path),
            array=data,
            pixelsize=SCALE[1],
            z_spacing=SCALE[0],
            translation=(3.0, 100.0, 50.0),  # ROI tables ignore it, as ngio does
            axes_names="zyx",
            ngff_version="0.4",
            levels=2,
            chunks=(6, 32, 32),
            consolidation_mode="auto",
        )
        rois = [
            NgioRoi.from_values(
                {
                    axis: (a * s, (b - a) * s)
                    for axis, (a, b), s in zip("zyx", box, SCALE, strict=True)
                },
                name=name,
            )
            for name, box in fovs.items()
        ]
        container.add_table("FOV_ROI_table", RoiTable(rois=rois))
    return path, data


def test_roi_table_runs_each_fov_as_its_own_region(tmp_path: Path, scheduler: str) -> None:
    path, data = _ngio_image(tmp_path, FOVS)
    result = engine.run(_pipeline(), path, roi_table="FOV_ROI_table", scheduler=scheduler)
    assert isinstance(result, UnitsResult)
    assert [u.roi_name for u, _ in result.results] == list(FOVS)
    got = zarr.open_group(str(path / "labels/nuclei"), mode="r")["s0"][...]
    smooth = ndimage.gaussian_filter(data.astype(np.float32), 1.5)  # on the whole image
    inside = np.zeros(SHAPE, dtype=bool)
    ids: list[set[int]] = []
    for box in FOVS.values():
        where = tuple(slice(a, b) for a, b in box)
        inside[where] = True
        crop = smooth[where]
        want, _ = ndimage.label(crop > threshold_otsu(crop))  # Otsu per ROI
        assert same_partition(got[where], want)
        ids.append(set(np.unique(got[where])) - {0})
    assert not got[~inside].any(), "wrote outside the ROIs"
    assert all(not (a & b) for k, a in enumerate(ids) for b in ids[k + 1 :]), "ids repeat"
    assert sum(len(i) for i in ids) == result.labels["nuclei"] == int(got.max())
    # the measurement table: one row per object, with the ROI it came from
    table = anndata.read_zarr(str(path / "tables/stats"))
    assert len(table) == result.labels["nuclei"]
    for name, box in FOVS.items():
        where = tuple(slice(a, b) for a, b in box)
        rows = {int(r) for r in table.obs_names[table.obs["roi"] == name]}
        assert rows == set(np.unique(got[where])) - {0}


def test_overlapping_rois_are_refused_unless_one_wins(
    tmp_path: Path, scheduler: str, capsys
) -> None:
    fovs = {"A": ((0, 12), (0, 40), (0, 60)), "B": ((0, 12), (30, 64), (50, 96))}
    path, _ = _ngio_image(tmp_path, fovs)
    with pytest.raises(ConfigError, match="ROIs 'A' and 'B' overlap"):
        engine.run(_pipeline(), path, roi_table="FOV_ROI_table", scheduler=scheduler)
    assert not (path / "labels").exists() and not (path / "tables/stats").exists()
    config = tmp_path / "p.yaml"
    config.write_text(_pipeline().to_yaml())
    args = ["run", str(config), "--input", str(path), "--roi-table", "FOV_ROI_table"]
    assert main([*args, "--scheduler", scheduler, "--quiet"]) == 2
    assert "overlap" in capsys.readouterr().err
    assert not (path / "labels").exists()
    # "last": B is written after A, so it wins where they overlap
    result = engine.run(
        _pipeline(), path, roi_table="FOV_ROI_table", roi_overlap="last", scheduler=scheduler
    )
    assert [u.roi_name for u, _ in result.results] == ["A", "B"]
    got = zarr.open_group(str(path / "labels/nuclei"), mode="r")["s0"][...]
    b_ids = set(np.unique(got[:, 30:64, 50:96])) - {0}
    assert b_ids and min(b_ids) > max(set(np.unique(got[:, :30, :50])) - {0})


def test_masking_roi_table_writes_each_object_inside_its_mask(tmp_path: Path, scheduler) -> None:
    from ngio import create_ome_zarr_from_array

    shape = (1, 64, 80)
    data = blobs(shape, seed=21)
    path = tmp_path / "organoids.zarr"
    # two touching L-shaped objects, each one's bounding box covering part of the other
    # (and background): unmasked, the second run would overwrite the first's foot
    organoids = np.zeros(shape[1:], dtype=np.uint32)
    organoids[5:50, 5:30] = 1
    organoids[40:50, 30:60] = 1
    organoids[5:40, 30:70] = 2
    organoids[40:60, 62:70] = 2
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        container = create_ome_zarr_from_array(
            store=str(path),
            array=data,
            pixelsize=0.5,
            axes_names="cyx",
            ngff_version="0.4",
            levels=2,
            chunks=(1, 32, 32),
            consolidation_mode="auto",
        )
        label = container.derive_label("organoids")
        label.set_array(organoids.reshape(label.shape))
        label.consolidate()
        container.add_table("organoids_ROI_table", container.build_masking_roi_table("organoids"))
    pipeline = (
        Pipeline()
        .add("g", "gaussian", "image", {"kind": "image", "name": "smooth"}, sigma=1.0)
        .add("mask", "threshold", "g", method="otsu")
        .add("nuclei", "label", "mask", {"kind": "label", "name": "nuclei"})
    )
    with pytest.raises(ConfigError, match="outputs are label and image outputs only"):
        engine.run(_pipeline(), path, roi_table="organoids_ROI_table", scheduler=scheduler)
    result = engine.run(pipeline, path, roi_table="organoids_ROI_table", scheduler=scheduler)
    assert [u.roi_name for u, _ in result.results] == ["1", "2"]
    labels = zarr.open_group(str(path / "labels/nuclei"), mode="r")["s0"][...].reshape(shape[1:])
    smooth_out = zarr.open_group(str(path / "results/smooth"), mode="r")["s0"][...]
    smooth_out = smooth_out.reshape(shape[1:])
    smooth = ndimage.gaussian_filter(data[0].astype(np.float32), 1.0)
    ids = []
    for k in (1, 2):
        ys, xs = np.nonzero(organoids == k)
        box = (slice(ys.min(), ys.max() + 1), slice(xs.min(), xs.max() + 1))
        crop = smooth[box]
        want, _ = ndimage.label(crop > threshold_otsu(crop))  # per object's box
        inside = organoids[box] == k
        assert same_partition(np.where(inside, labels[box], 0), np.where(inside, want, 0))
        assert np.allclose(smooth_out[box][inside], crop[inside], rtol=1e-6)
        ids.append(set(np.unique(labels[box][inside])) - {0})
    assert ids[0] and ids[1] and not (ids[0] & ids[1])
    outside = organoids == 0
    assert not labels[outside].any() and not smooth_out[outside].any()
    # the pyramid follows level 0: every 2nd voxel of the labels
    level1 = zarr.open_group(str(path / "labels/nuclei"), mode="r")["s1"][...]
    assert np.array_equal(level1.reshape(32, 40), labels[::2, ::2])


def test_roi_table_from_yaml_and_roi_naming_a_table(tmp_path: Path, scheduler: str) -> None:
    fovs = {"FOV_1": FOVS["FOV_1"], "FOV_2": FOVS["FOV_2"]}
    path, _ = _ngio_image(tmp_path, fovs)
    config = tmp_path / "p.yaml"
    config.write_text(f"input: {path}\nroi_table: FOV_ROI_table\n{_pipeline().to_yaml()}")
    assert main(["run", str(config), "--scheduler", scheduler, "--quiet"]) == 0
    table = anndata.read_zarr(str(path / "tables/stats"))
    assert set(table.obs["roi"]) == set(fovs)
    # `roi=` naming the table (not one of its ROIs) runs every ROI too
    again = engine.run(_pipeline(), path, roi="FOV_ROI_table", overwrite=True, scheduler=scheduler)
    assert [u.roi_name for u, _ in again.results] == list(fovs)


def test_reduce_over_image_is_one_otsu_over_the_tables_rois(tmp_path: Path, scheduler) -> None:
    path, data = _ngio_image(tmp_path, FOVS)
    pipeline = (
        Pipeline()
        .add("g", "gaussian", sigma=1.5)
        .add("mask", "threshold", "g", method="otsu")
        .add("nuclei", "label", "mask", {"kind": "label", "name": "nuclei"})
    )
    config = pipeline.to_dict()
    config["steps"][1]["reduce_over"] = "image"
    result = engine.run(
        Pipeline.build(config), path, roi_table="FOV_ROI_table", scheduler=scheduler
    )
    smooth = ndimage.gaussian_filter(data.astype(np.float32), 1.5)
    crops = [smooth[tuple(slice(a, b) for a, b in box)] for box in FOVS.values()]
    together = threshold_otsu(np.concatenate([c.ravel() for c in crops]))
    assert result.reduced["mask"][str(path)] == pytest.approx(float(together), rel=1e-6)
    got = zarr.open_group(str(path / "labels/nuclei"), mode="r")["s0"][...]
    for box, crop in zip(FOVS.values(), crops, strict=True):
        want, _ = ndimage.label(crop > together)
        assert same_partition(got[tuple(slice(a, b) for a, b in box)], want)
