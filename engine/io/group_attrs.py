"""One attribute of a group inside an image's zarr, read and written whole: what the
engine's run records (engine/state/records.py) are made of. A group's metadata is one
file that zarr writes in one step, so a kill never leaves half a record."""

from __future__ import annotations

from typing import Any

import zarr


def write_group_attr(root: str, path: str, key: str, value: Any) -> None:
    """Set attribute `key` of group `path` (made if missing) under the zarr at `root`."""
    try:
        group = zarr.open_group(f"{root}/{path}", mode="r+")
    except (FileNotFoundError, zarr.errors.BaseZarrError):
        zarr.open_group(root, mode="r+").create_group(path, attributes={key: value})
        return
    group.attrs.update({key: value})


def read_group_attr(root: str, path: str, key: str) -> Any | None:
    """Attribute `key` of group `path`, or None when there is no such group."""
    try:
        group = zarr.open_group(f"{root}/{path}", mode="r")
    except (FileNotFoundError, zarr.errors.BaseZarrError):
        return None
    return group.attrs.asdict().get(key)
