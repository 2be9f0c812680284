"""Plates as one run: every selected field of an HCS plate (written by ngio and by
ome-zarr-py) processed on one cluster, outputs in each field, per-field Otsu, and a
plate-level table with `well` and `field` columns."""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path

import anndata
import numpy as np
import pytest
import zarr
from conftest import blobs, same_partition
from scipy import ndimage
from skimage.filters import threshold_otsu

import engine
from engine.cli.commands import main
from engine.core.errors import ConfigError
from engine.core.pipeline import Pipeline
from engine.io.plates import collection_images
from engine.runs.units import UnitsFailed, UnitsResult

ROWS, COLUMNS, FIELDS = ("B", "C"), ("03", "05"), ("0", "1")


def _pipeline() -> Pipeline:
    return (
        Pipeline()
        .add("g", "gaussian", sigma=1.5)
        .add("mask", "threshold", "g", method="otsu")
        .add("nuclei", "label", "mask", {"kind": "label", "name": "nuclei"})
        .add("stats", "measure", "nuclei", {"kind": "table", "name": "stats"})
    )


def _field_data(shape: tuple[int, ...]) -> dict[str, np.ndarray]:
    """Each field's pixels, by `ROW/COL/FIELD`, with different brightness per field so
    per-field and whole-plate thresholds differ."""
    out = {}
    for k, (r, c, f) in enumerate((r, c, f) for r in ROWS for c in COLUMNS for f in FIELDS):
        data = blobs(shape, seed=100 + k).astype(np.float64) * (0.6 + 0.1 * k)
        out[f"{r}/{c}/{f}"] = data.astype(np.uint16)
    return out


def ngio_plate(tmp_path: Path, shape: tuple[int, ...]) -> tuple[Path, dict[str, np.ndarray]]:
    from ngio import ImageInWellPath, create_empty_plate, create_ome_zarr_from_array

    path = tmp_path / "ngio_plate.zarr"
    fields = _field_data(shape)
    images = [ImageInWellPath(row=k[0], column=k[2:4], path=k[5:]) for k in fields]
    axes = "cyx" if len(shape) == 3 and shape[0] == 1 else "zyx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        create_empty_plate(str(path), name="test", images=images, ngff_version="0.4")
        for key, data in fields.items():
            create_ome_zarr_from_array(
                store=str(path / key),
                array=data,
                pixelsize=0.5,
                axes_names=axes,
                ngff_version="0.4",
                levels=2,
                chunks=tuple(min(s, 32) for s in shape),
                consolidation_mode="auto",
                overwrite=True,
            )
    return path, fields


def ome_zarr_plate(tmp_path: Path, shape: tuple[int, ...]) -> tuple[Path, dict[str, np.ndarray]]:
    from ome_zarr.writer import write_image, write_plate_metadata, write_well_metadata

    path = tmp_path / "omezarr_plate.zarr"
    fields = _field_data(shape)
    root = zarr.open_group(str(path), mode="w", zarr_format=2)
    wells = [f"{r}/{c}" for r in ROWS for c in COLUMNS]
    write_plate_metadata(root, list(ROWS), list(COLUMNS), wells, field_count=len(FIELDS))
    for well in wells:
        group = root.require_group(well)
        write_well_metadata(group, list(FIELDS))
        for f in FIELDS:
            write_image(
                fields[f"{well}/{f}"],
                group.require_group(f),
                axes="zyx" if len(shape) == 3 else "yx",
                scale_factors=[2],
                storage_options={"chunks": tuple(min(s, 32) for s in shape)},
            )
    return path, fields


def _expected(data: np.ndarray) -> np.ndarray:
    smooth = ndimage.gaussian_filter(data.astype(np.float32), 1.5)
    return ndimage.label(smooth > threshold_otsu(smooth))[0]


def _check_plate(
    path: Path, fields: dict[str, np.ndarray], result: UnitsResult, reused: int = 0
) -> None:
    assert len(result.results) == len(fields)
    total = 0
    for key, data in fields.items():
        got = zarr.open_group(str(path / key / "labels/nuclei"), mode="r")
        level = sorted(k for k, _ in got.arrays())[0]
        labels = got[level][...]
        assert same_partition(labels.reshape(data.shape), _expected(data)), key
        total += int(labels.max())
    plate = anndata.read_zarr(str(path / "tables/stats"))
    assert len(plate) == total
    assert len(plate.obs_names.unique()) == total
    assert sum(len(r.reused) > 0 for _, r in result.results) == reused
    if not reused:
        assert total == sum(result.labels.values())
    assert set(plate.obs["well"]) == {"B03", "B05", "C03", "C05"}
    assert set(plate.obs["field"]) == set(FIELDS)


@pytest.mark.parametrize("shape", [(1, 48, 64), (8, 48, 64)], ids=["2d_cyx", "3d"])
def test_ngio_plate_in_one_run(tmp_path: Path, scheduler: str, shape) -> None:
    path, fields = ngio_plate(tmp_path, shape)
    result = engine.run(_pipeline(), path, scheduler=scheduler)
    _check_plate(path, fields, result)
    # ngio lists the outputs and reads each field's labels and tables
    from ngio import open_ome_zarr_plate

    plate = open_ome_zarr_plate(str(path))
    for key, data in fields.items():
        row, column, field = key.split("/")
        container = plate.get_image(row, column, field)
        assert "nuclei" in container.list_labels()
        assert "stats" in container.list_tables()
        labels = np.asarray(container.get_label("nuclei").get_array())
        assert same_partition(labels.reshape(data.shape), _expected(data)), key
        table = container.get_table("stats").dataframe
        assert len(table) == int(labels.max())


def test_ome_zarr_plate_wells_and_fields_selected(tmp_path: Path, scheduler: str) -> None:
    path, fields = ome_zarr_plate(tmp_path, (48, 64))
    images = collection_images(path, wells=["B03", "C/05"], fields=["1"])
    assert [i.label for i in images] == ["B03/1", "C05/1"]
    config = tmp_path / "p.yaml"
    config.write_text(_pipeline().to_yaml())
    args = ["run", str(config), "--input", str(path), "--scheduler", scheduler, "--quiet"]
    assert main([*args, "--wells", "B03,C05", "--fields", "1"]) == 0
    for key in fields:
        assert (path / key / "labels/nuclei").exists() == (key in ("B/03/1", "C/05/1"))
    assert main([*args, "--wells", "D07"]) == 2  # not in the plate: refused, nothing written
    # the rest of the plate: the two fields done are reused (same config and ROI)
    result = engine.run(_pipeline(), path, scheduler=scheduler, update=True)
    _check_plate(path, fields, result, reused=2)


def test_a_failing_field_is_named_and_the_others_finish(tmp_path: Path, scheduler: str) -> None:
    path, fields = ngio_plate(tmp_path, (1, 48, 64))
    # B03/1's level array vanishes once the run has started (after every field planned):
    # its run fails, the other fields' runs finish
    broken = path / "B/03/1/0"

    def progress(stage: str, total: int):
        if broken.exists():
            shutil.rmtree(broken, ignore_errors=True)  # two runs call this at once
        return lambda n: None

    with pytest.raises(UnitsFailed, match="B03/1") as failed:
        engine.run(_pipeline(), path, wells=["B03"], scheduler=scheduler, progress=progress)
    done = failed.value.result.results
    assert [u.image.label for u, _ in done] == ["B03/0"]
    assert (path / "B/03/0/labels/nuclei").exists()


def test_list_of_images_and_bad_input(tmp_path: Path, scheduler: str) -> None:
    path, fields = ngio_plate(tmp_path, (1, 48, 64))
    with pytest.raises(ConfigError, match="--wells: Z99 not in the plate"):
        engine.run(_pipeline(), path, wells=["Z99"], scheduler=scheduler)
    globbed = collection_images(str(path / "*" / "0[35]" / "0"))
    assert [i.path for i in globbed] == [str(path / k) for k in fields if k.endswith("/0")]
    chosen = [str(path / "B/03/0"), str(path / "C/05/1")]
    result = engine.run(_pipeline(), chosen, scheduler=scheduler)
    assert [u.image.path for u, _ in result.results] == chosen
    assert not result.plate_tables  # not a plate run
    assert not (path / "B/05/0/labels").exists()


def test_reduce_over_plate_is_one_otsu_over_all_fields(tmp_path: Path, scheduler: str) -> None:
    path, fields = ngio_plate(tmp_path, (1, 48, 64))
    data = _pipeline().to_dict()
    data["steps"][1]["reduce_over"] = "plate"
    pipeline = Pipeline.build(data)
    result = engine.run(pipeline, path, scheduler=scheduler)
    smooth = {k: ndimage.gaussian_filter(v.astype(np.float32), 1.5) for k, v in fields.items()}
    together = threshold_otsu(np.concatenate([s.ravel() for s in smooth.values()]))
    assert result.reduced["mask"]["plate"] == pytest.approx(float(together), rel=1e-6)
    per_field = {threshold_otsu(s) for s in smooth.values()}
    assert len(per_field) > 1  # the fields differ: one plate value is not any field's
    for key, s in smooth.items():
        got = zarr.open_group(str(path / key / "labels/nuclei"), mode="r")
        labels = got[sorted(k for k, _ in got.arrays())[0]][...]
        want, _ = ndimage.label(s > together)
        assert same_partition(labels.reshape(s.shape), want), key
        assert not (path / key / "results/reduce-over-mask").exists()  # first pass removed
    assert len(anndata.read_zarr(str(path / "tables/stats"))) == sum(result.labels.values())
