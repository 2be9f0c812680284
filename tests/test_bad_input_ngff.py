"""Broken NGFF images: `read_image` raises `NgffError` naming the path and the problem, in
one line (a missing path, not zarr, no multiscales, a missing level array, axes that do
not fit the arrays, an unsupported version)."""

from __future__ import annotations

from pathlib import Path

import pytest
import zarr
from ngff_by_hand import write_by_hand

from engine.core.errors import NgffError
from engine.io.metadata import read_image
from engine.io.sample_image import make_nuclei


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
