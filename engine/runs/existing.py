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

from engine.core.pipeline import Pipeline
from engine.io.existing import label_names, output_groups, read_label_image, stored_attrs
from engine.io.location import Location
from engine.io.metadata import ImageMeta
from engine.plan.versions import Existing, StoredOutput, reusable_rois, version_number
from engine.state.records import list_runs
from tasks import OPS


def read_existing(meta: ImageMeta, pipeline: Pipeline, store: Location | None = None) -> Existing:
    """The snapshot; `store`: a separate output store holding the outputs and run records
    (label images are looked up there first, then in the image)."""
    store = store if store is not None else meta.location
    steps = {s.name for s in pipeline.steps}
    references = {
        name
        for s in pipeline.steps
        if (name := s.extra_inputs().get("params.reference")) and name not in steps
    }
    references |= {
        s.typed_params().annotations for s in pipeline.steps if OPS[s.op].artifact == "model"
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
    models = None if store == meta.location else store.url
    return Existing(label_names(meta, store), labels, outputs, models)


def stored_versions(
    store: Location, kind: str, base: str, records: list[dict[str, Any]]
) -> tuple[StoredOutput, ...]:
    """Every version of output `base` in the store (listed or not), oldest first."""
    found = []
    for name, path in output_groups(store, kind):
        number = version_number(base, name)
        if number is not None:
            found.append(_stored(store, name, path, number, records))
    return tuple(sorted(found, key=lambda s: s.version))


def _stored(
    store: Location, name: str, path: str, number: int, records: list[dict[str, Any]]
) -> StoredOutput:
    record, dtype = stored_attrs(store, path)
    writer = last_writer(path, records)
    finished = writer is None or writer.get("state") == "completed"
    digest = record.get("config_hash")
    if not finished:
        digest = writer.get("config_hashes", {}).get(path, digest)
    return StoredOutput(
        name=name,
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
