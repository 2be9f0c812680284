"""An image's size read from its metadata files alone, with the standard library: for
the command's entry point (engine/cli/entry.py), which decides before importing zarr
whether a run may need worker processes.

Only the plain case answers: a local OME-Zarr image (NGFF 0.4 `.zattrs` + `.zarray`, or
0.5 `zarr.json`) whose first multiscale's first level is an array; anything else
(a URL, a plate, a collection, unreadable metadata) is None, and the caller assumes
nothing.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

# zarr v3 `data_type` names and their bytes; zarr v2 `dtype` strings are read by rule
_V3_BYTES = {
    "bool": 1,
    "int8": 1,
    "uint8": 1,
    "int16": 2,
    "uint16": 2,
    "float16": 2,
    "int32": 4,
    "uint32": 4,
    "float32": 4,
    "int64": 8,
    "uint64": 8,
    "float64": 8,
}
_V2_DTYPE = re.compile(r"^[<>|=]?[biuf](\d+)$")


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        found = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return None
    return found if isinstance(found, dict) else None


def local_image_size(path: str) -> tuple[int, int] | None:
    """Voxels and bytes per voxel of the full-resolution level of the local OME-Zarr
    image at `path`, or None when `path` is not plainly one (see the module docstring)."""
    if "://" in path:
        return None
    root = Path(path)
    group = _read_json(root / "zarr.json")
    if group is not None:  # zarr v3, NGFF 0.5
        attrs = group.get("attributes", {})
        ome = attrs.get("ome", {}) if isinstance(attrs, dict) else {}
        multiscales = ome.get("multiscales") if isinstance(ome, dict) else None
        array_file = "zarr.json"
    else:  # zarr v2, NGFF 0.4
        attrs = _read_json(root / ".zattrs") or {}
        multiscales = attrs.get("multiscales")
        array_file = ".zarray"
    try:
        level = multiscales[0]["datasets"][0]["path"]  # type: ignore[index]
    except (TypeError, KeyError, IndexError):
        return None
    if not isinstance(level, str) or not level or ".." in level:
        return None
    array = _read_json(root / level / array_file)
    if array is None:
        return None
    shape = array.get("shape")
    if not isinstance(shape, list) or not all(isinstance(n, int) and n >= 0 for n in shape):
        return None
    dtype = array.get("data_type", array.get("dtype"))
    found = _V2_DTYPE.match(dtype) if isinstance(dtype, str) else None
    itemsize = int(found[1]) if found else _V3_BYTES.get(dtype) if isinstance(dtype, str) else None
    if itemsize is None:
        return None
    return math.prod(shape), itemsize
