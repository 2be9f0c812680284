"""What an image's zarr (or its output store) holds, read for the run's snapshot
(engine/runs/existing.py): label images (metadata only), the output groups of a kind,
and an output's engine attributes and dtype."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import zarr

from engine.io.location import Location, Where, locate
from engine.io.metadata import ImageMeta, open_group, read_image
from engine.io.ngff_write import ENGINE_KEY, GROUP_OF_KIND, engine_attrs, listed


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
    return [
        (name, f"{group}/{name}")
        for name in store.list_dirs(group)
        if not name.startswith(".")  # an overwrite's new output
    ]


def output_run_ids(root: Where, path: str) -> list[str]:
    """The ids of the runs an output's provenance lists ([] when it has none)."""
    attrs = locate(root).read_attrs(path) or {}
    runs = attrs.get(ENGINE_KEY, {}).get("runs", [])
    return [str(r.get("run_id")) for r in runs if isinstance(r, dict)]


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


def surviving_ids(
    image: str | Path,
    array: str,
    earlier: list[tuple[tuple[int, ...], tuple[int, ...]]],
    written: tuple[tuple[int, ...], tuple[int, ...]],
) -> int:
    """How many distinct label ids of `array` (a label output's level, in `image`) lie in
    the `earlier` runs' boxes but outside the box a run just `written`: the ids earlier
    runs left after an `--update` (ids exist only where some run wrote). Read one chunk
    slab at a time; nothing is read when `written` covers every earlier box."""
    data = open_group(image)[array]
    step = max(1, data.chunks[0])
    found: set[int] = set()
    for start, stop in earlier:
        inside = all(
            w0 <= s and e <= w1 for s, e, w0, w1 in zip(start, stop, *written, strict=True)
        )
        if inside:
            continue
        for a in range(start[0], stop[0], step):
            b = min(stop[0], (a // step + 1) * step)
            window = (slice(a, b), *(slice(s, e) for s, e in zip(start[1:], stop[1:], strict=True)))
            block = np.asarray(data[window])
            lo = [max(w, s) - s for w, s in zip(written[0], (a, *start[1:]), strict=True)]
            origin = (a, *start[1:])
            hi = [min(w, e) - s for w, e, s in zip(written[1], (b, *stop[1:]), origin, strict=True)]
            if all(h > low for low, h in zip(lo, hi, strict=True)):
                block[tuple(slice(low, h) for low, h in zip(lo, hi, strict=True))] = 0
            found.update(np.unique(block).tolist())
    found.discard(0)
    return len(found)


def ids_left_by_earlier_runs(
    image: str | Path | Location, output: str, array: str, written: Any, run_id: str
) -> int:
    """Label ids that runs other than `run_id` wrote into `output` (its level `array`)
    outside the box `written` (a Roi): what an `--update` kept of the earlier runs."""
    runs = engine_attrs(open_group(image)[output]).get("runs", [])
    earlier = [
        (tuple(r["roi"]["start"]), tuple(r["roi"]["stop"]))
        for r in runs
        if r.get("run_id") != run_id and r.get("roi", {}).get("level") == written.level
    ]
    box = (tuple(written.start), tuple(written.stop))
    return surviving_ids(image, f"{output}/{array}", earlier, box)
