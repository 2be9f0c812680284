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
from pathlib import Path
from typing import Any


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        found = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return None
    return found if isinstance(found, dict) else None


def local_image_voxels(path: str) -> int | None:
    """Voxels of the full-resolution level of the local OME-Zarr image at `path`, or
    None when `path` is not plainly one (see the module docstring)."""
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
    shape = array.get("shape") if array is not None else None
    if not isinstance(shape, list) or not all(isinstance(n, int) and n >= 0 for n in shape):
        return None
    return math.prod(shape)
