"""`ngff-engine export`: an ROI of an image, a label image or a result as OME-TIFF, read
back with tifffile: the same voxels, its physical sizes and channel names."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import ome_types
import pytest
import tifffile
import zarr
from conftest import write_image

from engine import export
from engine.cli.commands import main
from engine.io.metadata import Axis
from engine.io.ngff_write import LevelSpec, create_image, image_label_json, list_in_parent


def ome_pixels(path: Path) -> dict:
    """The OME-XML's Pixels, after ome-types validated the XML against the OME schema
    (the model Bio-Formats, which Fiji uses, reads)."""
    with tifffile.TiffFile(path) as tif:
        xml = tif.ome_metadata
    ome_types.from_xml(xml)
    return tifffile.xml2dict(xml)["OME"]["Image"]["Pixels"]


@pytest.fixture
def image(tmp_path: Path) -> tuple[Path, np.ndarray]:
    rng = np.random.default_rng(0)
    data = rng.integers(0, 60000, (2, 10, 32, 24), dtype=np.uint16)
    path = write_image(
        tmp_path / "img.zarr",
        data,
        (1, 4, 16, 16),
        names=("c", "z", "y", "x"),
        scale=(1.0, 2.0, 0.5, 0.25),
    )
    root = zarr.open_group(str(path), mode="r+")
    ome = dict(root.attrs["ome"])
    ome["omero"] = {
        "channels": [
            {"label": n, "color": "FFFFFF", "window": {"min": 0, "max": 1, "start": 0, "end": 1}}
            for n in ("DAPI", "GFP")
        ]
    }
    root.attrs["ome"] = ome
    return path, data


def test_export_roi_of_the_image(image: tuple[Path, np.ndarray], tmp_path: Path) -> None:
    path, data = image
    out = tmp_path / "roi.ome.tif"
    result = export(path, out, "c=1:2,z=2:9,y=3:30,x=5:20")
    assert result.shape == (1, 7, 27, 15)
    back = tifffile.imread(out)
    np.testing.assert_array_equal(back.reshape(result.shape), data[1:2, 2:9, 3:30, 5:20])
    pixels = ome_pixels(out)
    assert float(pixels["PhysicalSizeZ"]) == 2.0
    assert float(pixels["PhysicalSizeY"]) == 0.5
    assert float(pixels["PhysicalSizeX"]) == 0.25
    assert pixels["PhysicalSizeXUnit"] == "µm"
    channel = pixels["Channel"]
    assert (channel[0] if isinstance(channel, list) else channel)["Name"] == "GFP"
    assert not list(tmp_path.glob(".*.partial"))


def test_export_level_and_cli(image: tuple[Path, np.ndarray], tmp_path: Path) -> None:
    path, data = image
    out = tmp_path / "s1.ome.tif"
    assert main(["export", str(path), str(out), "--level", "1", "--roi", "1:5,2:10,0:12"]) == 0
    s1 = zarr.open_array(str(path / "s1"), mode="r")[:, 1:5, 2:10, 0:12]
    with tifffile.TiffFile(out) as tif:
        assert tif.series[0].axes == "CZYX"
        np.testing.assert_array_equal(tif.asarray(), s1)
    pixels = ome_pixels(out)
    assert float(pixels["PhysicalSizeY"]) == 1.0 and float(pixels["PhysicalSizeX"]) == 0.5


def test_export_labels(image: tuple[Path, np.ndarray], tmp_path: Path) -> None:
    path, data = image
    labels = (data[0] > 30000).astype(np.uint32)
    root = zarr.open_group(str(path), mode="r+")
    axes = tuple(Axis(n, "space", "micrometer") for n in "zyx")
    levels = [
        LevelSpec("s0", labels.shape, (4, 16, 16), (2.0, 0.5, 0.25), (0.0, 0.0, 0.0)),
        LevelSpec("s1", (10, 16, 12), (4, 16, 16), (2.0, 1.0, 0.5), (0.0, 0.0, 0.0)),
    ]
    group = create_image(
        root,
        "labels/cells",
        version="0.5",
        axes=axes,
        levels=levels,
        dtype="uint32",
        name="cells",
        method="nearest",
        extra_ome=image_label_json("0.5"),
    )
    list_in_parent(root, "label", "cells", "0.5")
    group["s0"][...] = labels
    out = tmp_path / "labels.ome.tif"
    export(path, out, "1:4,0:32,0:24", labels="cells")
    np.testing.assert_array_equal(tifffile.imread(out), labels[1:4])
    assert float(ome_pixels(out)["PhysicalSizeZ"]) == 2.0


def test_export_bad_input(
    image: tuple[Path, np.ndarray], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    path, _ = image
    out = tmp_path / "x.ome.tif"
    assert main(["export", str(path), str(out), "--roi", "0:4,0:64,0:8"]) == 2
    assert "outside the image" in capsys.readouterr().err
    assert main(["export", str(path), str(out), "--labels", "nope"]) == 2
    assert "labels/nope" in capsys.readouterr().err
    assert main(["export", str(path), str(tmp_path / "x.tif")]) == 2
    assert ".ome.tif" in capsys.readouterr().err
    assert not out.exists()
    out.write_bytes(b"mine")
    assert main(["export", str(path), str(out), "--roi", "0:1,0:2,0:2"]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert out.read_bytes() == b"mine"
    assert main(["export", str(path), str(out), "--roi", "0:1,0:2,0:2", "--overwrite"]) == 0
    assert tifffile.imread(out).shape == (2, 2, 2)  # tifffile drops the 1-plane z


def test_export_named_roi_of_a_label_image(tmp_path: Path) -> None:
    """An ROI by name from the image's ROI tables (in micrometers), of labels/truth."""
    from engine.io.metadata import read_image
    from engine.io.rois import user_roi
    from engine.io.sample_zarr import write_sample

    image = Path(write_sample(tmp_path / "sample.zarr", (32, 128, 128), (16, 64, 64)))
    out = tmp_path / "test.ome.tif"
    assert main(["export", str(image), str(out), "--labels", "truth", "--roi", "test"]) == 0
    box = user_roi("test", read_image(image), 0)
    truth = zarr.open_array(str(image / "labels/truth/s0"), mode="r")[box.to_slices()]
    np.testing.assert_array_equal(tifffile.imread(out).reshape(truth.shape), truth)
    assert float(ome_pixels(out)["PhysicalSizeX"]) == 0.5
