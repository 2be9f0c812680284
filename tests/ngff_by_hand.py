"""NGFF images written with zarr alone, as the spec examples lay them out (5D with units,
per-level scale and translation, a global transform; 4D; 2D), for the reader tests
(test_ngff_read.py), pipelines on them (test_ngff_run.py) and broken images
(test_bad_input_ngff.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import zarr

from engine.io.sample_image import make_nuclei


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
