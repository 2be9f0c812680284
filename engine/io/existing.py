"""Reading what an image's zarr holds into the snapshot the compiler decides from.

Read once per plan, before compiling: the label images an evaluate step names as its
reference (metadata only), and for each output of the pipeline (a training step's model
artifact too) its stored versions with their config hashes, the ROIs they hold and
whether the last run that wrote each one finished. That last fact comes from the run
records (`_engine/runs`): a run that failed or was killed while writing an output leaves
it half written, whatever its attributes still say, so it is never reused (`--resume` or
a new run completes it). Such an output has the config hash its run record planned for
it (its attributes get theirs only when a run completes), so a versioned output is
completed under its own name, not as a new version.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import zarr

from engine.core.pipeline import Pipeline
from engine.io.metadata import ImageMeta, open_group, read_image
from engine.io.ngff_write import GROUP_OF_KIND, engine_attrs, listed
from engine.plan.versions import Existing, StoredOutput, reusable_rois, version_number
from engine.state.records import list_runs


def read_existing(meta: ImageMeta, pipeline: Pipeline) -> Existing:
    root = open_group(meta.path)
    steps = {s.name for s in pipeline.steps}
    references = {
        name
        for s in pipeline.steps
        if (name := s.extra_inputs().get("params.reference")) and name not in steps
    }
    labels = {}
    for name in sorted(references):
        label = read_label_image(meta, name)
        if label is not None:
            labels[name] = label
    records = list_runs(meta.path)
    outputs = {
        target: stored_versions(meta, *target, records)
        for s in pipeline.steps
        if (target := s.writes()) is not None
    }
    return Existing(tuple(listed(root, "labels", meta.version)), labels, outputs)


def read_label_image(meta: ImageMeta, name: str) -> ImageMeta | None:
    """Metadata of `labels/<name>`, or None if there is no such group."""
    path = Path(meta.path) / "labels" / name
    if not path.is_dir():
        return None
    return read_image(path, validate=False)


def stored_versions(
    meta: ImageMeta, kind: str, base: str, records: list[dict[str, Any]]
) -> tuple[StoredOutput, ...]:
    """Every version of output `base` on disk (listed or not), oldest first."""
    folder = Path(meta.path) / GROUP_OF_KIND[kind]
    found = []
    if folder.is_dir():
        for child in folder.iterdir():
            number = version_number(base, child.name)
            if number is not None and child.is_dir():
                found.append(_stored(child, f"{GROUP_OF_KIND[kind]}/{child.name}", number, records))
    return tuple(sorted(found, key=lambda s: s.version))


def _stored(folder: Path, path: str, number: int, records: list[dict[str, Any]]) -> StoredOutput:
    try:
        group = zarr.open_group(str(folder), mode="r")
        record = engine_attrs(group)
        level = group["s0"] if "s0" in group else None
        dtype = str(level.dtype) if isinstance(level, zarr.Array) else None
    except (OSError, ValueError, KeyError, zarr.errors.BaseZarrError):
        record, dtype = {}, None
    writer = last_writer(path, records)
    finished = writer is None or writer.get("state") == "completed"
    digest = record.get("config_hash")
    if not finished:
        digest = writer.get("config_hashes", {}).get(path, digest)
    return StoredOutput(
        name=folder.name,
        version=number,
        config_hash=digest,
        provenance=record.get("provenance", {}),
        reusable_rois=reusable_rois(record.get("runs", [])),
        finished=finished,
        dtype=dtype,
        record=record.get("version") or {},
    )


def last_writer(path: str, records: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The record of the latest run that wrote output `path`, if any."""
    writers = [r for r in records if path in r.get("outputs", [])]
    if not writers:
        return None
    return max(writers, key=lambda r: (str(r.get("started", "")), str(r.get("run_id", ""))))


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
