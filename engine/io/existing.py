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

from typing import Any

import zarr

from engine.core.pipeline import Pipeline
from engine.io.location import Location
from engine.io.metadata import ImageMeta, open_group, read_image
from engine.io.ngff_write import GROUP_OF_KIND, engine_attrs, listed
from engine.plan.versions import Existing, StoredOutput, reusable_rois, version_number
from engine.state.records import list_runs


def read_existing(meta: ImageMeta, pipeline: Pipeline, output: Location | None = None) -> Existing:
    """What the image holds, and (`output`: a separate output store) what its outputs
    and runs there hold; label images are looked up in the output store first."""
    store = output if output is not None else meta.location
    root = open_group(meta.location)
    steps = {s.name for s in pipeline.steps}
    references = {
        name
        for s in pipeline.steps
        if (name := s.extra_inputs().get("params.reference")) and name not in steps
    }
    labels = {}
    for name in sorted(references):
        label = read_label_image(meta, name, store)
        if label is not None:
            labels[name] = label
    records = list_runs(store)
    outputs = {
        target: stored_versions(store, *target, records)
        for s in pipeline.steps
        if (target := s.writes()) is not None
    }
    names = listed(root, "labels", meta.version)
    if store != meta.location and store.exists():
        names += [n for n in listed(open_group(store), "labels", meta.version) if n not in names]
    return Existing(tuple(names), labels, outputs)


def read_label_image(
    meta: ImageMeta, name: str, output: Location | None = None
) -> ImageMeta | None:
    """Metadata of `labels/<name>` (in `output` first, then the image), or None if there
    is no such group."""
    for where in dict.fromkeys(w for w in (output, meta.location) if w is not None):
        if where.is_group(f"labels/{name}"):
            return read_image(where.child(f"labels/{name}"), validate=False)
    return None


def stored_versions(
    store: Location, kind: str, base: str, records: list[dict[str, Any]]
) -> tuple[StoredOutput, ...]:
    """Every version of output `base` in `store` (listed or not), oldest first."""
    group = GROUP_OF_KIND[kind]
    found = []
    for child in store.list_dirs(group):
        number = version_number(base, child)
        if number is not None:
            found.append(
                _stored(store.child(f"{group}/{child}"), f"{group}/{child}", number, records)
            )
    return tuple(sorted(found, key=lambda s: s.version))


def _stored(
    folder: Location, path: str, number: int, records: list[dict[str, Any]]
) -> StoredOutput:
    try:
        group = zarr.open_group(folder.zarr_url(), mode="r")
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
