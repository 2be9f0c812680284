"""One attribute of a group inside an image's zarr (or its output store), read and
written whole: what the engine's run records (engine/state/records.py) are made of. A
group's metadata is one file (one object on S3) written in one step, so a kill never
leaves half a record. See `Location.read_attrs`/`write_attrs` (engine/io/location.py)."""

from __future__ import annotations

from typing import Any

from engine.io.location import Where, locate


def write_group_attr(root: Where, path: str, key: str, value: Any) -> None:
    """Set attribute `key` of group `path` (made if missing) under the zarr at `root`."""
    locate(root).write_attrs(path, {key: value})


def read_group_attr(root: Where, path: str, key: str) -> Any | None:
    """Attribute `key` of group `path`, or None when there is no such group."""
    attrs = locate(root).read_attrs(path)
    return None if attrs is None else attrs.get(key)
