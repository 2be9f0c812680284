"""ROI tables as ngio reads and writes them, checked against ngio itself on a translated,
anisotropic image: micrometers from the image's own origin, ngio's rounding outwards,
ngio's table attributes; tables written by older engine versions still read the same."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import zarr

from engine.core.geometry import Roi
from engine.io.metadata import open_group, read_image
from engine.io.roi_tables import ROI_COLUMNS, box_to_micrometer, load_roi_table, write_rois
from engine.io.rois import image_roi, resolve_roi

SHAPE = (10, 64, 80)
SCALE = (2.0, 0.325, 0.325)
TRANSLATION = (4.0, 10.0, 20.0)
# micrometer boxes from the image origin, none voxel-aligned: rounding matters
BOXES = {
    "a": {"x": (5.0, 17.0), "y": (2.2, 22.1), "z": (1.0, 7.0)},
    "b": {"x": (3.0, 3.0 + 0.325 * 7.003), "y": (0.324, 1.0), "z": (2.9, 4.1)},
    "tiny": {"x": (0.1, 0.2), "y": (0.0, 0.325), "z": (0.0, 2.0)},
    "edge": {"x": (20.0, 30.0), "y": (15.0, 25.0), "z": (15.0, 25.0)},  # past the end: clipped
}


def _ngio_image(tmp_path: Path, version: str) -> tuple[Path, object]:
    from ngio import create_ome_zarr_from_array

    path = tmp_path / "translated.zarr"
    data = np.arange(np.prod(SHAPE), dtype=np.uint32).reshape(SHAPE)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        container = create_ome_zarr_from_array(
            store=str(path),
            array=data,
            pixelsize=SCALE[1],
            z_spacing=SCALE[0],
            translation=TRANSLATION,
            axes_names="zyx",
            ngff_version=version,
            levels=2,
            chunks=(5, 32, 32),
            consolidation_mode="auto",
        )
    return path, container


def _engine_pixels(path: Path, name: str, level: int) -> np.ndarray:
    meta = read_image(path)
    box = resolve_roi(image_roi(read_image(path), name), meta, level, name)
    array = zarr.open_array(str(path / meta.level(level).path), mode="r")
    return np.asarray(array[box.to_slices()])


@pytest.mark.parametrize("version", ["0.4", "0.5"])
def test_ngio_table_selects_the_pixels_ngio_selects(tmp_path: Path, version: str) -> None:
    from ngio import Roi as NgioRoi
    from ngio.tables import RoiTable

    path, container = _ngio_image(tmp_path, version)
    rois = [
        NgioRoi.from_values({k: (a, b - a) for k, (a, b) in box.items()}, name=name)
        for name, box in BOXES.items()
    ]
    container.add_table("FOV_ROI_table", RoiTable(rois=rois))
    container.add_table("well_ROI_table", container.build_image_roi_table("well"))
    for level, level_path in enumerate(("0", "1")):
        image = container.get_image(path=level_path)
        for roi in [*rois, container.get_roi_table("well_ROI_table").get("well")]:
            expected = np.asarray(image.get_roi(roi))
            got = _engine_pixels(path, roi.name, level)
            assert got.shape == expected.shape, (roi.name, level)
            assert np.array_equal(got, expected), (roi.name, level)
    # the whole-image ROI of a translated image is the whole image, not "outside" it
    meta = read_image(path)
    assert resolve_roi(image_roi(read_image(path), "well"), meta, 0) == Roi.from_shape(SHAPE, 0)


@pytest.mark.parametrize("version", ["0.4", "0.5"])
def test_engine_table_reads_back_in_ngio_to_the_same_pixels(tmp_path: Path, version: str) -> None:
    from ngio import open_ome_zarr_container

    path, _ = _ngio_image(tmp_path, version)
    meta = read_image(path)
    boxes = {"r1": Roi((2, 16, 5), (7, 48, 61), 0), "r2": Roi((0, 0, 0), SHAPE, 0)}
    write_rois(
        open_group(path, mode="r+"), {n: box_to_micrometer(meta, b) for n, b in boxes.items()}
    )
    attrs = zarr.open_group(str(path / "tables/rois"), mode="r").attrs.asdict()
    assert {
        k: attrs[k] for k in ("type", "table_version", "backend", "index_key", "index_type")
    } == {
        "type": "roi_table",
        "table_version": "1",
        "backend": "anndata_v1",
        "index_key": "FieldIndex",
        "index_type": "str",
    }
    container = open_ome_zarr_container(str(path))
    table = container.get_roi_table("rois")
    data = np.arange(np.prod(SHAPE), dtype=np.uint32).reshape(SHAPE)
    image = container.get_image()
    for name, box in boxes.items():
        assert np.array_equal(np.asarray(image.get_roi(table.get(name))), data[box.to_slices()])
        assert resolve_roi(image_roi(read_image(path), name), meta, 0, name) == box


def test_legacy_engine_table_with_translation_reads_the_same_voxels(tmp_path: Path) -> None:
    import anndata
    import pandas as pd

    from engine.io.tables import write_anndata

    path, _ = _ngio_image(tmp_path, "0.4")
    meta = read_image(path)
    box = Roi((2, 16, 5), (7, 48, 61), 0)
    # as the engine wrote it before: the translation added, its own attribute set
    row = [TRANSLATION[2 - k] + box.start[2 - k] * SCALE[2 - k] for k in range(3)]
    row += [(box.stop[2 - k] - box.start[2 - k]) * SCALE[2 - k] for k in range(3)]
    data = anndata.AnnData(
        X=np.asarray([row]),
        obs=pd.DataFrame(index=pd.Index(["old"], name="FieldIndex")),
        var=pd.DataFrame(index=pd.Index(list(ROI_COLUMNS))),
    )
    legacy = {
        "type": "roi_table",
        "fractal_table_version": "1",
        "table_version": "1",
        "backend": "anndata",
        "index_key": "FieldIndex",
        "index_type": "str",
    }
    write_anndata(open_group(path, mode="r+"), "rois", data, legacy)
    assert load_roi_table(path / "tables/rois").legacy
    assert resolve_roi(image_roi(read_image(path), "old"), meta, 0, "old") == box
    # adding an ROI rewrites the table in ngio's convention, the old row converted
    write_rois(open_group(path, mode="r+"), {"new": box_to_micrometer(meta, box)})
    table = load_roi_table(path / "tables/rois")
    assert not table.legacy
    for axis in "xyz":
        assert table.rois["old"][axis] == pytest.approx(table.rois["new"][axis])
    assert resolve_roi(image_roi(read_image(path), "old"), meta, 0, "old") == box
