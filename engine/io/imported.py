"""The zarr side of an import (engine/runs/importing.py): the new image's group with its
arrays and NGFF metadata, channel names and colours as `omero`, and the provenance
recorded once every level is written."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from engine.io.metadata import Axis, Version
from engine.io.ngff_write import LevelSpec, create_image, set_engine_attrs, zarr_format
from engine.io.sources import SourceInfo

DEFAULT_COLOURS = ("FFFFFF", "00FF00", "FF00FF", "00FFFF", "FF0000", "0000FF", "FFFF00")


def create_imported(
    path: Path,
    info: SourceInfo,
    axes: Sequence[Axis],
    levels: Sequence[LevelSpec],
    version: Version,
    name: str,
) -> None:
    """An empty image at `path` (replacing what is there) with every level's array."""
    root = zarr.open_group(str(path), mode="w", zarr_format=zarr_format(version))
    extra = {"omero": omero(info)} if "c" in info.axes else {}
    create_image(
        root,
        "",
        version=version,
        axes=axes,
        levels=levels,
        dtype=info.dtype,
        name=name,
        extra_ome=extra,
    )


def record_import(path: Path, record: dict[str, Any]) -> None:
    set_engine_attrs(zarr.open_group(str(path), mode="r+"), record)


def omero(info: SourceInfo) -> dict[str, Any]:
    """Channel names and colours (NGFF `omero`), from the source where it gives them; the
    display window is the dtype's range (the data's own range would need a pass over it)."""
    count = info.shape[info.axes.index("c")]
    dtype = np.dtype(info.dtype)
    lo, hi = (
        (float(np.iinfo(dtype).min), float(np.iinfo(dtype).max))
        if dtype.kind in "iu"
        else (0.0, 1.0)
    )
    channels = []
    for i in range(count):
        given = info.channels[i] if i < len(info.channels) else None
        channels.append(
            {
                "label": (given.name if given and given.name else f"c{i}"),
                "color": (given.color if given and given.color else DEFAULT_COLOURS[i % 7]),
                "active": True,
                "coefficient": 1,
                "family": "linear",
                "inverted": False,
                "window": {"min": lo, "max": hi, "start": lo, "end": hi},
            }
        )
    return {"channels": channels, "rdefs": {"model": "color"}}
