"""What an image's zarr holds, read for the run's snapshot (engine/runs/existing.py):
label images (metadata only), the output groups of a kind, and an output's engine
attributes and dtype."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import zarr

from engine.io.metadata import ImageMeta, open_group, read_image
from engine.io.ngff_write import GROUP_OF_KIND, engine_attrs, listed


def label_names(meta: ImageMeta) -> tuple[str, ...]:
    """The label images listed in the image's `labels` group."""
    return tuple(listed(open_group(meta.path), "labels", meta.version))


def read_label_image(meta: ImageMeta, name: str) -> ImageMeta | None:
    """Metadata of `labels/<name>`, or None if there is no such group."""
    path = Path(meta.path) / "labels" / name
    if not path.is_dir():
        return None
    return read_image(path, validate=False)


def output_groups(meta: ImageMeta, kind: str) -> list[tuple[str, str]]:
    """(name, path in the image) of every group in the folder of outputs of `kind`."""
    group = GROUP_OF_KIND[kind]
    folder = Path(meta.path) / group
    if not folder.is_dir():
        return []
    return [
        (child.name, f"{group}/{child.name}")
        for child in folder.iterdir()
        if child.is_dir() and not child.name.startswith(".")  # an overwrite's new output
    ]


def output_run_ids(root: str, path: str) -> list[str]:
    """The ids of the runs an output's provenance lists ([] when it has none)."""
    try:
        group = zarr.open_group(str(Path(root) / path), mode="r")
    except (OSError, ValueError, KeyError, zarr.errors.BaseZarrError):
        return []
    runs = engine_attrs(group).get("runs", [])
    return [str(r.get("run_id")) for r in runs if isinstance(r, dict)]


def stored_attrs(meta: ImageMeta, path: str) -> tuple[dict[str, Any], str | None]:
    """An output's engine attributes and the dtype of its level s0 ({} and None when
    it cannot be read: a half-written group)."""
    try:
        group = zarr.open_group(str(Path(meta.path) / path), mode="r")
        record = engine_attrs(group)
        level = group["s0"] if "s0" in group else None
        dtype = str(level.dtype) if isinstance(level, zarr.Array) else None
    except (OSError, ValueError, KeyError, zarr.errors.BaseZarrError):
        return {}, None
    return record, dtype
