"""Reading OME-Zarr images (NGFF 0.4 on Zarr v2, 0.5 on Zarr v3) with `engine.ngff.read_image`.

Images come from three writers: our own sample writer, ome-zarr-py's `write_image`,
and zarr by hand as in the NGFF spec examples (5D with units, per-level scale and
translation, a global transform; 4D; 2D). A small pipeline then runs on the 5D and
the t,z,y,x images and is checked against scipy on the whole array. Broken images
must raise `NgffError` naming the path and the problem.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr
from ome_zarr.format import FormatV04, FormatV05
from scipy import ndimage as ndi

from engine import Pipeline, RoiSpec, run
from engine.core.errors import NgffError
from engine.io.metadata import ImageMeta, read_image
from engine.io.sample_image import make_nuclei
from engine.io.sample_zarr import write_sample

with warnings.catch_warnings():  # its own deprecated default argument, at import time
    warnings.simplefilter("ignore", DeprecationWarning)
    from ome_zarr.writer import write_image

THRESHOLD = 500.0


# --- helpers -----------------------------------------------------------------------------


def write_by_hand(
    path: Path,
    version: str,
    axes: list[dict[str, str]],
    levels: list[dict[str, Any]],
    global_transforms: list[dict[str, Any]] | None = None,
    version_string: str | None = None,
) -> Path:
    """An NGFF image written with zarr alone, as the spec examples lay it out.

    Each level: {"path", "data", "chunks", "scale", "translation" (optional)}.
    """
    zarr_format = 2 if version == "0.4" else 3
    root = zarr.open_group(str(path), mode="w", zarr_format=zarr_format)
    datasets = []
    for lv in levels:
        kwargs: dict[str, Any] = {}
        if zarr_format == 3 and len(axes) == lv["data"].ndim:
            kwargs["dimension_names"] = [a["name"] for a in axes]
        array = root.create_array(
            lv["path"],
            shape=lv["data"].shape,
            chunks=lv["chunks"],
            dtype=lv["data"].dtype,
            fill_value=0,
            **kwargs,
        )
        array[...] = lv["data"]
        transforms: list[dict[str, Any]] = [{"type": "scale", "scale": list(lv["scale"])}]
        if lv.get("translation") is not None:
            transforms.append({"type": "translation", "translation": list(lv["translation"])})
        datasets.append({"path": lv["path"], "coordinateTransformations": transforms})
    multiscale: dict[str, Any] = {"name": "by-hand", "axes": axes, "datasets": datasets}
    if global_transforms is not None:
        multiscale["coordinateTransformations"] = global_transforms
    if version == "0.4":
        root.attrs.update({"multiscales": [{"version": version_string or "0.4", **multiscale}]})
    else:
        root.attrs.update(
            {"ome": {"version": version_string or "0.5", "multiscales": [multiscale]}}
        )
    return path


def nuclei_stack(lead: tuple[int, ...], spatial: tuple[int, ...], seed: int = 0) -> np.ndarray:
    """A uint16 stack: a different synthetic nuclei volume for every leading index."""
    out = np.empty(lead + spatial, dtype=np.uint16)
    for k, index in enumerate(np.ndindex(*lead)):
        out[index] = make_nuclei(spatial, seed=seed + k).image
    return out


def downsample_yx(data: np.ndarray, factor: int) -> np.ndarray:
    return np.ascontiguousarray(data[..., ::factor, ::factor])


def assert_same_partition(got: np.ndarray, want: np.ndarray) -> None:
    """Same objects, any ids: foregrounds match and ids correspond one to one."""
    assert got.shape == want.shape
    np.testing.assert_array_equal(got > 0, want > 0)
    fg = want > 0
    pairs = np.unique(np.stack([got[fg].astype(np.int64), want[fg].astype(np.int64)]), axis=1)
    n_got = len(np.unique(got[fg]))
    n_want = len(np.unique(want[fg]))
    assert n_got == n_want == pairs.shape[1], (n_got, n_want, pairs.shape[1])


AXES_5D = [
    {"name": "t", "type": "time", "unit": "second"},
    {"name": "c", "type": "channel"},
    {"name": "z", "type": "space", "unit": "nanometer"},
    {"name": "y", "type": "space", "unit": "nanometer"},
    {"name": "x", "type": "space", "unit": "nanometer"},
]
SHAPE_5D = (3, 2, 6, 40, 36)
CHUNKS_5D = (1, 1, 3, 16, 16)
# per level: scale and translation (nanometers in space; the global transform scales t by 2)
SCALES_5D = [
    (1.0, 1.0, 500.0, 200.0, 200.0),
    (1.0, 1.0, 500.0, 400.0, 400.0),
    (1.0, 1.0, 500.0, 800.0, 800.0),
]
TRANSLATIONS_5D = [
    (0.0, 0.0, 1000.0, 50.0, 60.0),
    (0.0, 0.0, 1000.0, 150.0, 160.0),
    (0.0, 0.0, 1000.0, 350.0, 360.0),
]


def write_5d(path: Path, version: str) -> np.ndarray:
    data = nuclei_stack(SHAPE_5D[:2], SHAPE_5D[2:], seed=10)
    levels = [
        {
            "path": str(k),
            "data": downsample_yx(data, 2**k),
            "chunks": CHUNKS_5D,
            "scale": SCALES_5D[k],
            "translation": TRANSLATIONS_5D[k],
        }
        for k in range(3)
    ]
    write_by_hand(
        path,
        version,
        AXES_5D,
        levels,
        global_transforms=[{"type": "scale", "scale": [2.0, 1.0, 1.0, 1.0, 1.0]}],
    )
    return data


def write_tzyx(path: Path, version: str) -> np.ndarray:
    axes = [
        {"name": "t", "type": "time", "unit": "millisecond"},
        {"name": "z", "type": "space", "unit": "micrometer"},
        {"name": "y", "type": "space", "unit": "micrometer"},
        {"name": "x", "type": "space", "unit": "micrometer"},
    ]
    data = nuclei_stack((3,), (6, 40, 36), seed=30)
    levels = [
        {
            "path": f"s{k}",
            "data": downsample_yx(data, 2**k),
            "chunks": (1, 4, 16, 16),
            "scale": (100.0, 2.0, 0.5 * 2**k, 0.5 * 2**k),
            "translation": (0.0, 0.0, 0.25 * (2**k - 1), 0.25 * (2**k - 1)),
        }
        for k in range(2)
    ]
    write_by_hand(path, version, axes, levels)
    return data


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


# --- running a pipeline on them ------------------------------------------------------------


def _pipeline(path: Path) -> Pipeline:
    return (
        Pipeline(input=str(path))
        .add("smooth", "gaussian", sigma=1.0)
        .add("mask", "threshold", input="smooth", method="value", value=THRESHOLD)
        .add("nuclei", "label", input="mask", output={"kind": "label", "name": "nuclei"})
    )


def _oracle(volume: np.ndarray, box: tuple[slice, ...]) -> tuple[np.ndarray, int]:
    smooth = ndi.gaussian_filter(volume.astype(np.float32), 1)
    return ndi.label(smooth[box] > THRESHOLD)


def _check_labels(
    path: Path,
    source: ImageMeta,
    frames: np.ndarray,
    t_range: range,
    box: tuple[slice, ...],
    count: int,
) -> None:
    """Labels at labels/nuclei: t,z,y,x; per time point in `t_range` equal to the oracle
    inside `box` and zero outside it; zero at every other time point."""
    out = read_image(path / "labels" / "nuclei")
    assert out.version == source.version
    assert out.axis_names == ("t", "z", "y", "x")
    keep = [i for i, a in enumerate(source.axis_names) if a != "c"]
    assert len(out.levels) == len(source.levels)
    for lv, src in zip(out.levels, source.levels, strict=True):
        assert lv.shape == tuple(src.shape[i] for i in keep)
        assert lv.scale == pytest.approx(tuple(src.scale[i] for i in keep))
        assert lv.translation == pytest.approx(tuple(src.translation[i] for i in keep))
    labels = zarr.open_array(str(path / "labels" / "nuclei" / out.levels[0].path), mode="r")[...]
    total = 0
    ids_seen: set[int] = set()
    for t in range(labels.shape[0]):
        if t not in t_range:
            assert not labels[t].any(), f"time point {t} is outside the ROI but has labels"
            continue
        want, n = _oracle(frames[t], box)
        assert n >= 3, "the test data should hold several objects per time point"
        assert_same_partition(labels[t][box], want)
        outside = labels[t].copy()
        outside[box] = 0
        assert not outside.any(), f"time point {t}: labels outside the ROI"
        ids = set(np.unique(labels[t][box]).tolist()) - {0}
        assert not ids & ids_seen, "ids repeat across time points"
        ids_seen |= ids
        total += n
    assert count == total
    # coarser levels hold something where the ROI was, nothing at other time points
    coarse = zarr.open_array(str(path / "labels" / "nuclei" / out.levels[-1].path), mode="r")[...]
    for t in range(coarse.shape[0]):
        assert coarse[t].any() == (t in t_range)
    listed = zarr.open_group(str(path / "labels"), mode="r").attrs.asdict()
    listed = listed.get("ome", listed)
    assert "nuclei" in listed["labels"]


@pytest.mark.parametrize("version", ["0.4", "0.5"])
def test_run_on_5d_roi_restricts_t_and_c(tmp_path: Path, version: str, scheduler: str) -> None:
    path = tmp_path / "5d.zarr"
    data = write_5d(path, version)
    source = read_image(path)
    roi = RoiSpec(t=(1, 3), c=(1, 2), y=(5, 37))
    result = run(_pipeline(path), roi=roi, scheduler=scheduler)
    assert result.outputs == {"nuclei": str(path / "labels" / "nuclei")}
    box = (slice(None), slice(5, 37), slice(None))
    # the ROI's first channel (1) is the one to process; channel 0 would give other objects
    assert not np.array_equal(_oracle(data[1, 0], box)[0] > 0, _oracle(data[1, 1], box)[0] > 0)
    _check_labels(path, source, data[:, 1], range(1, 3), box, result.labels["nuclei"])


def test_run_on_tzyx(tmp_path: Path, scheduler: str) -> None:
    path = tmp_path / "tzyx.zarr"
    data = write_tzyx(path, "0.5")
    source = read_image(path)
    result = run(_pipeline(path), roi={"t": (1, 2), "z": (1, 5)}, scheduler=scheduler)
    box = (slice(1, 5), slice(None), slice(None))
    _check_labels(path, source, data, range(1, 2), box, result.labels["nuclei"])


# --- broken inputs -------------------------------------------------------------------------


def _raises(path: Path, *words: str) -> None:
    with pytest.raises(NgffError) as info:
        read_image(path)
    message = str(info.value)
    assert str(path) in message, message
    for word in words:
        assert word in message, message
    assert "\n" not in message


def _good_3d(path: Path, version: str = "0.4") -> Path:
    data = make_nuclei((4, 16, 16), seed=1).image
    axes = [{"name": n, "type": "space", "unit": "micrometer"} for n in "zyx"]
    return write_by_hand(
        path,
        version,
        axes,
        [
            {"path": "0", "data": data, "chunks": (2, 8, 8), "scale": (1.0, 1.0, 1.0)},
            {
                "path": "1",
                "data": data[:, ::2, ::2].copy(),
                "chunks": (2, 8, 8),
                "scale": (1, 2, 2),
            },
        ],
    )


def test_good_helper_image_reads(tmp_path: Path) -> None:
    """The base of the broken cases below is itself valid, so each break is what fails."""
    for version in ("0.4", "0.5"):
        meta = read_image(_good_3d(tmp_path / f"ok{version}.zarr", version))
        assert len(meta.levels) == 2


def test_missing_path(tmp_path: Path) -> None:
    _raises(tmp_path / "nowhere.zarr", "no such file or directory")


def test_directory_that_is_not_zarr(tmp_path: Path) -> None:
    path = tmp_path / "plain_dir"
    path.mkdir()
    (path / "notes.txt").write_text("not zarr")
    _raises(path, "not a zarr group")


def test_file_that_is_not_zarr(tmp_path: Path) -> None:
    path = tmp_path / "image.tif"
    path.write_bytes(b"II*\x00")
    _raises(path, "not a zarr group")


@pytest.mark.parametrize("zarr_format", [2, 3])
def test_zarr_group_without_multiscales(tmp_path: Path, zarr_format: int) -> None:
    path = tmp_path / "group.zarr"
    group = zarr.open_group(str(path), mode="w", zarr_format=zarr_format)
    group.attrs.update({"something": "else"} if zarr_format == 2 else {"ome": {"version": "0.5"}})
    _raises(path, "no 'multiscales'")


@pytest.mark.parametrize("version", ["0.4", "0.5"])
def test_dataset_path_to_missing_array(tmp_path: Path, version: str) -> None:
    path = _good_3d(tmp_path / "img.zarr", version)
    group = zarr.open_group(str(path), mode="r+")
    attrs = group.attrs.asdict()
    ome = attrs["ome"] if version == "0.5" else attrs
    ome["multiscales"][0]["datasets"][1]["path"] = "s9"
    group.attrs.update(attrs)
    _raises(path, "'s9'", "missing")


@pytest.mark.parametrize("version", ["0.4", "0.5"])
def test_axes_count_differs_from_ndim(tmp_path: Path, version: str) -> None:
    data = make_nuclei((16, 16), seed=1).image
    axes = [{"name": n, "type": "space"} for n in "zyx"]
    path = write_by_hand(
        tmp_path / "img.zarr",
        version,
        axes,
        [{"path": "0", "data": data, "chunks": (8, 8), "scale": (1.0, 1.0, 1.0)}],
    )
    _raises(path, "2 dimensions", "3 axes")


@pytest.mark.parametrize(("version", "bad"), [("0.4", "0.3"), ("0.4", "0.6"), ("0.5", "0.6")])
def test_unsupported_version(tmp_path: Path, version: str, bad: str) -> None:
    data = make_nuclei((4, 16, 16), seed=1).image
    axes = [{"name": n, "type": "space"} for n in "zyx"]
    path = write_by_hand(
        tmp_path / "img.zarr",
        version,
        axes,
        [{"path": "0", "data": data, "chunks": (2, 8, 8), "scale": (1.0, 1.0, 1.0)}],
        version_string=bad,
    )
    _raises(path, "unsupported", repr(bad))
