"""Reading OME-Zarr images (NGFF 0.4 on Zarr v2, 0.5 on Zarr v3) with `read_image`.

Images come from three writers: our own sample writer, ome-zarr-py's `write_image`, and
zarr by hand as in the NGFF spec examples (tests/ngff_by_hand.py: 5D with units,
per-level scale and translation, a global transform; 4D; 2D).
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr
from ngff_by_hand import (
    CHUNKS_5D,
    SCALES_5D,
    TRANSLATIONS_5D,
    nuclei_stack,
    write_5d,
    write_by_hand,
    write_tzyx,
)
from ome_zarr.format import FormatV04, FormatV05

from engine.core.errors import NgffError
from engine.io.metadata import ImageMeta, read_image
from engine.io.sample_image import make_nuclei
from engine.io.sample_zarr import write_sample

with warnings.catch_warnings():  # its own deprecated default argument, at import time
    warnings.simplefilter("ignore", DeprecationWarning)
    from ome_zarr.writer import write_image


# --- images written by `ngff-engine sample` ---------------------------------------------


@pytest.mark.parametrize("version", ["0.4", "0.5"])
def test_sample_3d(tmp_path: Path, version: str) -> None:
    path = Path(write_sample(tmp_path / "s.zarr", (8, 64, 48), (4, 32, 32), version))
    assert (path / ("zarr.json" if version == "0.5" else ".zattrs")).exists()
    meta = read_image(path)
    assert isinstance(meta, ImageMeta)
    assert meta.version == version
    assert meta.axis_names == ("z", "y", "x")
    assert all(a.type == "space" and a.unit == "micrometer" for a in meta.axes)
    assert meta.spatial_axes == (0, 1, 2) and meta.channel_axis is None
    assert [lv.path for lv in meta.levels] == ["s0", "s1", "s2"]
    assert [lv.shape for lv in meta.levels] == [(8, 64, 48), (8, 32, 24), (8, 16, 12)]
    assert [lv.chunks for lv in meta.levels] == [(4, 32, 32), (4, 32, 24), (4, 16, 12)]
    assert [lv.scale for lv in meta.levels] == [(1, 0.5, 0.5), (1, 1, 1), (1, 2, 2)]
    assert all(lv.translation == (0, 0, 0) for lv in meta.levels)
    assert all(lv.dtype == "uint16" for lv in meta.levels)
    assert meta.spacing_um(0) == (1.0, 0.5, 0.5) and meta.spacing_um(2) == (1.0, 2.0, 2.0)
    # the label image the sample writes beside it is an image too
    truth = read_image(path / "labels" / "truth")
    assert truth.version == version and truth.levels[0].dtype == "uint32"
    assert [lv.shape for lv in truth.levels] == [lv.shape for lv in meta.levels]


@pytest.mark.parametrize("version", ["0.4", "0.5"])
def test_sample_2d(tmp_path: Path, version: str) -> None:
    path = write_sample(tmp_path / "s2d.zarr", (64, 80), (32, 32), version)
    meta = read_image(path)
    assert meta.version == version and meta.path == str(path)
    assert meta.axis_names == ("y", "x") and meta.spatial_axes == (0, 1)
    assert [lv.shape for lv in meta.levels] == [(64, 80), (32, 40), (16, 20)]
    assert [lv.chunks for lv in meta.levels] == [(32, 32), (32, 32), (16, 20)]
    assert meta.levels[1].scale == (1.0, 1.0)
    assert meta.spacing_um(0) == (0.5, 0.5)


# --- images written by ome-zarr-py --------------------------------------------------------


@pytest.mark.filterwarnings("ignore:Scale value not provided")
@pytest.mark.parametrize("fmt", [FormatV04(), FormatV05()], ids=["0.4", "0.5"])
@pytest.mark.parametrize("axes", ["czyx", "zyx", "yx"])
def test_ome_zarr_py_write_image(tmp_path: Path, fmt: Any, axes: str) -> None:
    shapes = {"c": 2, "z": 10, "y": 64, "x": 48}
    chunk_of = {"c": 1, "z": 5, "y": 32, "x": 16}
    base = {"z": 2.0, "y": 0.5, "x": 0.25}
    shape = tuple(shapes[a] for a in axes)
    chunks = tuple(chunk_of[a] for a in axes)
    data = (np.arange(np.prod(shape)) % 997).astype(np.uint16).reshape(shape)
    path = tmp_path / "omezarr.zarr"
    group = zarr.open_group(str(path), mode="w", zarr_format=fmt.zarr_format)
    spatial = [a for a in axes if a != "c"]
    write_image(
        data,
        group,
        scale_factors=[2, 4],
        fmt=fmt,
        axes=list(axes),
        scale={a: base[a] for a in spatial},
        axes_units={a: "micrometer" for a in spatial},
        storage_options={"chunks": chunks},
    )
    meta = read_image(path)
    assert meta.version == fmt.version
    assert meta.axis_names == tuple(axes)
    types = ["channel" if a == "c" else "space" for a in axes]
    assert [a.type for a in meta.axes] == types
    assert [a.unit for a in meta.axes] == [None if a == "c" else "micrometer" for a in axes]
    assert meta.channel_axis == (0 if "c" in axes else None)
    assert meta.spatial_axes == tuple(i for i, a in enumerate(axes) if a != "c")
    assert len(meta.levels) == 3
    for k, lv in enumerate(meta.levels):
        factor = {"c": 1, "z": 1, "y": 2**k, "x": 2**k}
        assert lv.shape == tuple(-(-shapes[a] // factor[a]) for a in axes)
        assert lv.scale == tuple(1.0 if a == "c" else base[a] * factor[a] for a in axes)
        # ome-zarr-py shifts coarser levels by half their extra voxel size
        want_t = tuple(0.0 if a in "cz" else base[a] * (factor[a] - 1) / 2 for a in axes)
        assert lv.translation == pytest.approx(want_t)
        assert lv.dtype == "uint16"
        array = zarr.open_array(str(path / lv.path), mode="r")
        assert lv.chunks == tuple(int(c) for c in array.chunks)
    assert meta.levels[0].chunks == chunks
    assert meta.spacing_um(1) == tuple(base[a] * (2 if a in "yx" else 1) for a in spatial)


# --- images written by hand as in the spec examples -------------------------------------


@pytest.mark.parametrize("version", ["0.4", "0.5"])
def test_spec_5d_with_units_scale_and_translation(tmp_path: Path, version: str) -> None:
    path = tmp_path / "5d.zarr"
    write_5d(path, version)
    meta = read_image(path)
    assert meta.version == version and meta.name == "by-hand"
    assert meta.axis_names == ("t", "c", "z", "y", "x")
    assert [(a.type, a.unit) for a in meta.axes] == [
        ("time", "second"),
        ("channel", None),
        ("space", "nanometer"),
        ("space", "nanometer"),
        ("space", "nanometer"),
    ]
    assert meta.spatial_axes == (2, 3, 4)
    assert meta.channel_axis == 1
    assert meta.axis_index("c") == 1 and meta.axis_index("q") is None
    assert [lv.path for lv in meta.levels] == ["0", "1", "2"]
    assert [lv.shape for lv in meta.levels] == [
        (3, 2, 6, 40, 36),
        (3, 2, 6, 20, 18),
        (3, 2, 6, 10, 9),
    ]
    assert all(lv.chunks == CHUNKS_5D for lv in meta.levels)
    for k, lv in enumerate(meta.levels):
        # the global scale (t x 2) composes with each level's own transforms
        assert lv.scale == pytest.approx((2.0, *SCALES_5D[k][1:]))
        want_t = (2.0 * TRANSLATIONS_5D[k][0], *TRANSLATIONS_5D[k][1:])
        assert lv.translation == pytest.approx(want_t)
    # nanometers become micrometers; only the spatial axes count
    assert meta.spacing_um(0) == pytest.approx((0.5, 0.2, 0.2))
    assert meta.spacing_um(2) == pytest.approx((0.5, 0.8, 0.8))
    with pytest.raises(NgffError, match="level 3 does not exist"):
        meta.spacing_um(3)


@pytest.mark.parametrize("version", ["0.4", "0.5"])
def test_spec_4d_czyx(tmp_path: Path, version: str) -> None:
    axes = [
        {"name": "c", "type": "channel"},
        {"name": "z", "type": "space", "unit": "micrometer"},
        {"name": "y", "type": "space", "unit": "micrometer"},
        {"name": "x", "type": "space", "unit": "micrometer"},
    ]
    data = nuclei_stack((3,), (4, 24, 20))
    write_by_hand(
        tmp_path / "czyx.zarr",
        version,
        axes,
        [{"path": "0", "data": data, "chunks": (1, 2, 8, 8), "scale": (1.0, 3.0, 0.4, 0.4)}],
    )
    meta = read_image(tmp_path / "czyx.zarr")
    assert meta.axis_names == ("c", "z", "y", "x")
    assert meta.channel_axis == 0 and meta.spatial_axes == (1, 2, 3)
    (lv,) = meta.levels
    assert lv.shape == (3, 4, 24, 20) and lv.chunks == (1, 2, 8, 8)
    assert lv.scale == (1.0, 3.0, 0.4, 0.4)
    assert lv.translation == (0.0, 0.0, 0.0, 0.0)  # none given: zero
    assert meta.spacing_um(0) == pytest.approx((3.0, 0.4, 0.4))


@pytest.mark.parametrize("version", ["0.4", "0.5"])
def test_spec_4d_tzyx(tmp_path: Path, version: str) -> None:
    write_tzyx(tmp_path / "tzyx.zarr", version)
    meta = read_image(tmp_path / "tzyx.zarr")
    assert meta.axis_names == ("t", "z", "y", "x")
    assert meta.axes[0].type == "time" and meta.axes[0].unit == "millisecond"
    assert meta.channel_axis is None and meta.spatial_axes == (1, 2, 3)
    assert [lv.path for lv in meta.levels] == ["s0", "s1"]
    assert [lv.shape for lv in meta.levels] == [(3, 6, 40, 36), (3, 6, 20, 18)]
    assert meta.levels[1].scale == (100.0, 2.0, 1.0, 1.0)
    assert meta.levels[1].translation == (0.0, 0.0, 0.25, 0.25)
    assert meta.spacing_um(0) == (2.0, 0.5, 0.5)


@pytest.mark.parametrize("version", ["0.4", "0.5"])
def test_spec_2d_yx(tmp_path: Path, version: str) -> None:
    axes = [{"name": n, "type": "space", "unit": "micrometer"} for n in "yx"]
    data = make_nuclei((30, 50), seed=3).image
    write_by_hand(
        tmp_path / "yx.zarr",
        version,
        axes,
        [
            {"path": "0", "data": data, "chunks": (16, 16), "scale": (0.3, 0.3)},
            {"path": "1", "data": data[::2, ::2].copy(), "chunks": (16, 16), "scale": (0.6, 0.6)},
        ],
    )
    meta = read_image(tmp_path / "yx.zarr")
    assert meta.axis_names == ("y", "x") and meta.axes[0].type == "space"
    assert meta.spatial_axes == (0, 1) and meta.channel_axis is None
    assert [lv.shape for lv in meta.levels] == [(30, 50), (15, 25)]
    assert [lv.chunks for lv in meta.levels] == [(16, 16), (16, 16)]
    assert meta.spacing_um(1) == pytest.approx((0.6, 0.6))
