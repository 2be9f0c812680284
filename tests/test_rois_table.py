"""Named ROIs in the image's zarr: the Fractal/ngio ROI table, lookup by name, saving."""

from __future__ import annotations

import json
from pathlib import Path

import anndata
import numpy as np
import pytest
import zarr
from conftest import Cli, blobs, write_image

from engine.core.errors import ConfigError
from engine.core.geometry import Roi
from engine.core.pipeline import Pipeline
from engine.io.metadata import open_group, read_image
from engine.io.roi_tables import ROI_COLUMNS, box_to_micrometer, read_rois, write_rois
from engine.io.rois import image_roi, resolve_roi
from engine.runs.planning import make_plan
from engine.runs.runner import run

PIPELINE = """
rois:
  corner: {units: pixel, z: [0, 8], y: [4, 36], x: [10, 42]}
steps:
  - {name: smooth, op: gaussian, params: {sigma: 1.0}}
  - {name: mask, op: threshold, input: smooth, params: {method: value, value: 2000}}
  - {name: cells, op: label, input: mask, output: {kind: label, name: cells}}
"""


def _image(tmp_path: Path, version: str = "0.5", shape=(16, 48, 64)) -> Path:
    # anisotropic, non-unit scales so pixel <-> micrometer conversion is exercised
    scale = (2.0, 0.325, 0.325)[-len(shape) :]
    chunks = (8, 16, 16)[-len(shape) :]
    return write_image(tmp_path / "img.zarr", blobs(shape, seed=3), chunks, version, scale=scale)


@pytest.mark.parametrize("version", ["0.4", "0.5"])
def test_roi_table_layout_round_trips(tmp_path: Path, version: str) -> None:
    path = _image(tmp_path, version)
    meta = read_image(path)
    box = Roi((2, 5, 7), (9, 40, 61), 0)
    write_rois(open_group(path, mode="r+"), {"a": box_to_micrometer(meta, box)})
    # Fractal/ngio layout: an AnnData table in the image's zarr format, listed in tables/
    tables = zarr.open_group(str(path / "tables"), mode="r")
    assert tables.attrs["tables"] == ["rois"]
    group = tables["rois"]
    assert group.metadata.zarr_format == (2 if version == "0.4" else 3)
    attrs = group.attrs.asdict()
    assert attrs["type"] == "roi_table" and attrs["table_version"] == "1"
    assert attrs["backend"] == "anndata_v1" and "fractal_table_version" not in attrs
    table = anndata.read_zarr(str(path / "tables/rois"))
    assert list(table.var_names) == list(ROI_COLUMNS)
    assert list(table.obs_names) == ["a"]
    row = dict(zip(table.var_names, np.asarray(table.X)[0]))
    assert row["x_micrometer"] == pytest.approx(7 * 0.325)
    assert row["len_x_micrometer"] == pytest.approx((61 - 7) * 0.325)
    assert row["z_micrometer"] == 4.0 and row["len_z_micrometer"] == 14.0
    assert row["y_micrometer"] == pytest.approx(5 * 0.325)
    # back to the same voxels, at level 0 and (halved in y/x) at level 1
    assert resolve_roi(image_roi(meta, "a"), meta, 0, "a") == box
    # at level 1 rounded outwards, as ngio reads a table: y 2.5..20 -> 2..20, x 3.5..30.5 -> 3..31
    assert resolve_roi(image_roi(meta, "a"), meta, 1, "a") == Roi((2, 2, 3), (9, 20, 31), 1)
    # adding another ROI keeps the first; writing one again replaces it
    other = box_to_micrometer(meta, Roi((0, 0, 0), (16, 10, 10), 0))
    write_rois(open_group(path, mode="r+"), {"b": other})
    write_rois(
        open_group(path, mode="r+"), {"a": box_to_micrometer(meta, Roi.from_shape((16, 48, 64), 0))}
    )
    rois = read_rois(path)
    assert list(rois) == ["a", "b"]
    assert rois["a"][1]["x"] == (0.0, pytest.approx(64 * 0.325))
    assert zarr.open_group(str(path / "tables"), mode="r").attrs["tables"] == ["rois"]


def test_2d_image_stores_unit_z_and_ignores_it(tmp_path: Path) -> None:
    path = _image(tmp_path, "0.5", shape=(48, 64))
    meta = read_image(path)
    box = Roi((4, 8), (20, 40), 0)
    write_rois(open_group(path, mode="r+"), {"flat": box_to_micrometer(meta, box)})
    table = anndata.read_zarr(str(path / "tables/rois"))
    row = dict(zip(table.var_names, np.asarray(table.X)[0]))
    assert (row["z_micrometer"], row["len_z_micrometer"]) == (0.0, 1.0)
    assert resolve_roi(image_roi(meta, "flat"), meta, 0, "flat") == box


def test_names_come_from_the_config_first_then_the_zarr(tmp_path: Path) -> None:
    path = _image(tmp_path)
    meta = read_image(path)
    stored = Roi((0, 0, 0), (8, 16, 16), 0)
    write_rois(
        open_group(path, mode="r+"),
        {"stored": box_to_micrometer(meta, stored), "corner": box_to_micrometer(meta, stored)},
    )
    config = tmp_path / "p.yaml"
    config.write_text(PIPELINE)
    pipeline = Pipeline.from_yaml(config)
    _, plan = make_plan(pipeline, path, "stored")
    assert plan.roi == stored
    _, plan = make_plan(pipeline, path, "corner")  # the config's wins
    assert plan.roi == Roi((0, 4, 10), (8, 36, 42), 0)
    with pytest.raises(ConfigError, match="'nope'.*corner.*in the image: corner, stored"):
        make_plan(pipeline, path, "nope")


def test_a_run_saves_its_config_roi_and_the_cli_finds_it(
    tmp_path: Path, scheduler: str, cli: Cli
) -> None:
    path = _image(tmp_path)
    config = tmp_path / "p.yaml"
    config.write_text(PIPELINE)
    pipeline = Pipeline.from_yaml(config)
    result = run(pipeline, path, "corner", scheduler=scheduler)
    assert result.roi == Roi((0, 4, 10), (8, 36, 42), 0)
    rois = read_rois(path)
    assert list(rois) == ["corner"]
    assert rois["corner"][1]["y"] == (pytest.approx(4 * 0.325), pytest.approx(36 * 0.325))
    # a config without that ROI: `plan --roi corner` finds it in the zarr
    bare = tmp_path / "bare.yaml"
    bare.write_text("steps:" + PIPELINE.split("steps:")[1])
    ran = cli(["plan", str(bare), "--input", str(path), "--roi", "corner", "--json"])
    assert ran.code == 0
    shown = json.loads(ran.out)
    assert shown["roi"] == str(result.roi)
    # `info` lists it, in micrometers
    ran = cli(["info", str(path), "--json"])
    assert ran.code == 0
    info = json.loads(ran.out)
    assert [r["name"] for r in info["rois"]] == ["corner"]
    assert info["rois"][0]["table"] == "rois"
    assert info["rois"][0]["micrometer"]["z"] == [0.0, 16.0]
    ran = cli(["info", str(path)])
    assert ran.code == 0
    assert "roi corner (tables/rois): z: 0..16" in ran.out
    # a run on a pixel range saves nothing new
    run(pipeline, path, {"z": [8, 16]}, scheduler=scheduler, update=True)
    assert list(read_rois(path)) == ["corner"]
