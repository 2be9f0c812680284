"""What an image's zarr (or its output store) holds, read for the run's snapshot
(engine/runs/existing.py): label images (metadata only), the output groups of a kind,
and an output's engine attributes and dtype."""

from __future__ import annotations

from typing import Any

import zarr

from engine.io.location import Location
from engine.io.metadata import ImageMeta, open_group, read_image
from engine.io.ngff_write import GROUP_OF_KIND, engine_attrs, listed


def label_names(meta: ImageMeta, store: Location | None = None) -> tuple[str, ...]:
    """The label images listed in the image's `labels` group, then those of a separate
    output store."""
    names = listed(open_group(meta.location), "labels", meta.version)
    if store is not None and store != meta.location and store.exists():
        names += [n for n in listed(open_group(store), "labels", meta.version) if n not in names]
    return tuple(names)


def read_label_image(meta: ImageMeta, name: str, store: Location | None = None) -> ImageMeta | None:
    """Metadata of `labels/<name>` (in the output store first, then the image), or None if
    there is no such group."""
    for where in dict.fromkeys(w for w in (store, meta.location) if w is not None):
        if where.is_group(f"labels/{name}"):
            return read_image(where.child(f"labels/{name}"), validate=False)
    return None


def output_groups(store: Location, kind: str) -> list[tuple[str, str]]:
    """(name, path in the store) of every group in the folder of outputs of `kind`."""
    group = GROUP_OF_KIND[kind]
    return [(name, f"{group}/{name}") for name in store.list_dirs(group)]


def stored_attrs(store: Location, path: str) -> tuple[dict[str, Any], str | None]:
    """An output's engine attributes and the dtype of its level s0 ({} and None when
    it cannot be read: a half-written group)."""
    try:
        group = zarr.open_group(store.child(path).zarr_url(), mode="r")
        record = engine_attrs(group)
        level = group["s0"] if "s0" in group else None
        dtype = str(level.dtype) if isinstance(level, zarr.Array) else None
    except (OSError, ValueError, KeyError, zarr.errors.BaseZarrError):
        return {}, None
    return record, dtype
