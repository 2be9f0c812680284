"""A run's outputs: whether each may be written (refused before anything is), created
when their first stage starts, and their provenance recorded when the run completes;
the run's scratch arrays; tables and evaluation scores; previews."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import numpy as np

from engine.core.errors import ConfigError, OutputConflict
from engine.core.layout import preview_file
from engine.core.version import __version__
from engine.execute.executor import Executor
from engine.io.existing import stored_attrs
from engine.io.location import METADATA_FILES, Workspace
from engine.io.metadata import ImageMeta, open_group
from engine.io.models import write_model
from engine.io.ngff_write import (
    GROUP_OF_KIND,
    attributes_document,
    chunk_key_encoding,
    create_image,
    engine_attrs,
    fast_compressor,
    image_label_json,
    list_in_parent,
    set_engine_attrs,
)
from engine.io.output_store import source_image
from engine.io.preview import preview
from engine.io.tables import merge_rows, read_rows, read_table, table_attrs, write_table
from engine.plan.types import OutputPlan, Plan
from engine.plan.versions import describe_change
from engine.runs.bookkeeping import Mode
from engine.runs.evaluation import evaluation_attrs, roi_key
from engine.state.records import RunRecord
from engine.worker.faces import face_array_layout, face_array_path, face_planes
from engine.worker.labels import label_dtype
from tasks.evaluate import Scores, scores
from tasks.measure import table_columns


def check_flags(overwrite: bool, update: bool, resume: bool) -> None:
    """The ways a run may treat existing outputs, checked once for `run` and `submit`."""
    if overwrite and update:
        raise ConfigError("--overwrite and --update exclude each other")
    if resume and (overwrite or update):
        raise ConfigError("--resume continues a run with its own --overwrite/--update choice")


def check_output(ws: Workspace, out: OutputPlan, overwrite: bool, update: bool) -> Mode:
    """Decide what happens to an output, refusing before anything is written."""
    if not ws.output.exists(out.path):
        return "create"
    if overwrite:
        return "overwrite"
    existing, _ = stored_attrs(ws.output, out.path)
    if "config_hash" not in existing:
        raise OutputConflict(
            f"output {out.path} exists and was not written by an ngff-engine run; "
            "use --overwrite to replace it"
        )
    old = existing.get("provenance", {})
    if existing.get("config_hash") != out.config_hash:
        raise OutputConflict(
            f"output {out.path} exists with a different step config "
            f"({describe_change(old, out.provenance)}); "
            "use --overwrite to replace it"
        )
    if out.kind == "model":
        raise OutputConflict(
            f"model {out.path} exists, trained with this config on another ROI; a model is "
            "trained once: use --overwrite to train it again, or another params.model"
        )
    if not update:
        raise OutputConflict(
            f"output {out.path} exists (same config); use --update to add this ROI to it "
            "or --overwrite to replace it"
        )
    return "update"


class OutputWriter:
    """Creates outputs when their first stage starts and records provenance at the end."""

    def __init__(
        self,
        meta: ImageMeta,
        plan: Plan,
        modes: dict[str, Mode],
        run_id: str,
        record: RunRecord | None = None,
        created: set[str] | None = None,
        resumed: dict[str, Any] | None = None,
        staged: dict[str, str] | None = None,
        ws: Workspace | None = None,
    ) -> None:
        self.meta = meta
        self.staged = dict(staged or {})  # output -> the sibling an overwrite writes first
        self.ws = ws if ws is not None else Workspace.of(meta.location)
        self.plan = plan
        self.modes = modes
        self.run_id = run_id
        self.record = record
        self.created = set(created or ())  # outputs this run already made (before a resume)
        self.resumed = resumed is not None
        self.by_step = {out.step: out for out in plan.outputs}
        self.offsets: dict[str, int] = dict((resumed or {}).get("offsets", {}))
        self.max_labels: dict[str, int] = {}
        self.evaluations: dict[str, Scores] = {}
        self.previews: dict[str, str] = {}  # evaluation table -> PNG of its ROI
        self.root = open_group(self.ws.output, mode="r+")
        # per output this run created: its parent group's metadata document, and the
        # bytes it held before the output was listed there (None: there was none)
        self.listings: dict[str, tuple[str, bytes | None]] = {}

    def prepare(self, key: str, dtype: str | None, count: int | None) -> int:
        """Create the array a stage writes; for label outputs return the id offset."""
        step, _, part = key.partition("/")
        if part in ("local", "input"):
            self._scratch(f"{self.plan.scratch}/{step}/{part}", dtype)
            return 0
        out = self.by_step.get(step)
        if out is None:
            if count is not None:
                self._scratch(f"{self.plan.scratch}/{step}/final", label_dtype(count))
            return 0
        offset = 0
        if out.kind == "label" and count is not None:
            if step in self.offsets:  # a resumed run keeps the offset it started with
                offset = int(self.offsets[step])
            elif self.modes[step] == "update":
                offset = int(engine_attrs(self.root[out.path]).get("max_label", 0))
            if self.record is not None and step not in self.offsets:
                self.offsets[step] = offset
                self.record.update(offsets=self.offsets)
            dtype = label_dtype(count + offset)
            self.max_labels[step] = count + offset
        if self.modes[step] == "update":
            existing = self.root[f"{out.path}/{out.levels[0].path}"]
            if np.dtype(existing.dtype).itemsize < np.dtype(dtype).itemsize:
                raise OutputConflict(
                    f"output {out.path} holds {existing.dtype} ids; {count + offset} objects need "
                    f"{dtype}: use --overwrite"
                )
            return offset
        if step not in self.created:
            self._create(out, dtype)
            self.created.add(step)
            if self.record is not None:
                self.record.update(created=sorted(self.created))
        return offset

    def _scratch(self, path: str, dtype: str) -> None:
        level = self.meta.level(self.plan.level)
        shape = self.meta.drop_channel(level.shape)
        chunks = self.plan.chunks
        if path.endswith("/input"):  # a reduction's input, in the blocks of its passes
            chunks = next(s.tasks.chunks for s in self.plan.stages if s.target == path)
        self._scratch_array(path, dtype, shape, chunks)
        if path.endswith("/local"):
            stage = next(s for s in self.plan.stages if s.target == path)
            paired = any(
                s.kind in ("faces", "match") and s.step == stage.step for s in self.plan.stages
            )
            for axis in self.plan.spatial if paired else ():  # no pairs: no interior border
                face_shape, face_chunks = face_array_layout(
                    shape, self.plan.chunks, axis, face_planes(stage, axis)
                )
                self._scratch_array(face_array_path(path, axis), dtype, face_shape, face_chunks)

    def _scratch_array(
        self, path: str, dtype: str, shape: tuple[int, ...], chunks: tuple[int, ...]
    ) -> None:
        if self.resumed and self.ws.output.exists(path):
            return  # made by the run being resumed: its chunks are marked done or redone
        self.root.create_array(
            path,
            shape=shape,
            chunks=chunks,
            dtype=dtype,
            fill_value=0,
            overwrite=True,
            compressors=self._scratch_compressor(dtype),
            chunk_key_encoding=chunk_key_encoding(self.root.metadata.zarr_format),
        )

    def _scratch_compressor(self, dtype: str) -> Any:
        """Floats (e.g. a smoothed image) barely compress: raw; ids compress well."""
        if np.dtype(dtype).kind == "f":
            return None
        return fast_compressor(dtype, self.root.metadata.zarr_format)

    def where(self, out: OutputPlan) -> str:
        """Where the run writes an output: its own path, or the sibling of an overwrite
        (engine/runs/staging.py)."""
        return self.staged.get(out.path, out.path)

    def _create(self, out: OutputPlan, dtype: str) -> None:
        document = f"{GROUP_OF_KIND[out.kind]}/{attributes_document(self.meta.version)}"
        try:
            self.listings[out.step] = (document, self.ws.output.read_bytes(document))
        except FileNotFoundError:
            self.listings[out.step] = (document, None)
        version = self.meta.version
        extra = {}
        if out.kind == "label":
            extra = image_label_json(version, source_image(self.ws, 2))
        create_image(
            self.root,
            self.where(out),
            version=version,
            axes=out.axes,
            levels=out.levels,
            dtype=dtype,
            name=out.name,
            method="nearest" if out.kind == "label" else "mean",
            extra_ome=extra,
        )
        list_in_parent(self.root, out.kind, out.name, version)

    def undo_unwritten(self) -> None:
        """After a failed run: an output this run created but wrote no chunk of (its one
        label-block task failed, say: engine/worker/labels.py creates the output before
        it) goes again, and its parent's listing gets back the bytes it had, so that bad
        input leaves the image as it was. One with chunks stays, for --resume."""
        where = self.ws.output
        for step, (document, before) in self.listings.items():
            out = self.by_step[step]
            path = self.where(out)
            files = where.walk_files(f"{path}/{out.levels[0].path}")
            if not where.is_local or any(Path(f).name not in METADATA_FILES for f in files):
                continue
            where.delete_tree(path)
            if before is not None:
                where.write_bytes(document, before)
            elif where.list(GROUP_OF_KIND[out.kind]) == [Path(document).name]:
                where.delete_tree(GROUP_OF_KIND[out.kind])  # the run made the group too
            self.created.discard(step)
            if self.record is not None:
                self.record.update(created=sorted(self.created))

    def finish(self, executor: Executor) -> None:
        now = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
        roi = self.plan.roi.to_json()
        previous = {
            out.step: self._write_table(out, executor)
            for out in self.plan.outputs
            if out.kind == "table"
        }
        models = {
            out.step: write_model(self.ws.output, self.root, out.path, executor.models[out.step])
            for out in self.plan.outputs
            if out.kind == "model"
        }
        for out in self.plan.outputs:
            group = self.root[self.where(out)]
            if out.step in previous:
                record = previous[out.step]
            else:
                record = engine_attrs(group) if self.modes[out.step] == "update" else {}
            runs = [r for r in record.get("runs", []) if r.get("run_id") != self.run_id]
            runs = [*runs, {"run_id": self.run_id, "roi": roi, "time": now}]
            record = {
                "engine_version": __version__,
                "config_hash": out.config_hash,
                "provenance": out.provenance,
                "source": {"image": source_image(self.ws, out.path.count("/") + 1)},
                "runs": runs,
            }
            if out.step in self.max_labels:
                record["max_label"] = self.max_labels[out.step]
            if out.step in models:
                record["model"] = models[out.step]
            if out.version is not None:
                record["version"] = dict(out.version)
            if out.kind == "table":
                record["units"] = self._table_units(out)
            set_engine_attrs(group, record)

    def _preview(self, out: OutputPlan, labels: str, key: str, reference: str) -> str:
        """A PNG of the run's ROI comparing the evaluated labels with the reference (true
        and false positives, false negatives; engine/io/preview.py), in
        `_engine/previews/`; returns its path."""
        box = {
            a: [int(lo), int(hi)]
            for a, lo, hi in zip(
                self.plan.axes, self.plan.roi.start, self.plan.roi.stop, strict=True
            )
            if a in "zyx"
        }
        box["level"] = self.plan.level
        target = self.ws.output.child(preview_file(out.name, key))
        name = labels.removeprefix("labels/")
        truth = str(reference).removeprefix("labels/")
        preview(self.ws, target, box, name, level=self.plan.level, reference=truth)
        return str(target)

    def _write_table(self, out: OutputPlan, executor: Executor) -> dict[str, Any]:
        """Write a measurement or evaluation table (merging rows into it on --update);
        return the provenance record it had before, for the run list."""
        path = self.ws.output.child(out.path)
        update = self.modes[out.step] == "update"
        record = engine_attrs(self.root[out.path]) if update else {}
        if out.op == "evaluate":
            result = scores(executor.evaluations[out.step])
            self.evaluations[out.name] = result
            key = roi_key(self.plan.roi, self.plan.axes)
            rows = (np.asarray([key]), Scores.columns(), np.asarray([result.values()]))
            if update:
                rows = merge_rows(read_rows(path), rows)
            provenance = out.provenance
            attrs = evaluation_attrs(provenance["labels"], provenance["reference"])
            write_table(self.root, out.name, *rows, attrs, index_name="roi")
            config = next(c for c in provenance["chain"] if c["name"] == out.step)
            if config["params"].get("preview"):
                self.previews[out.name] = self._preview(
                    out, provenance["labels"], key, provenance["reference"]
                )
            return record
        spatial = self.plan.spatial
        level = out.levels[0]
        new = table_columns(
            executor.measurements[out.step],
            [level.scale[a] for a in spatial],
            [level.translation[a] for a in spatial],
        )
        if update:
            new = merge_rows(read_table(path), new)
        label = str(out.provenance["labels"]).removeprefix("labels/")
        write_table(self.root, out.name, *new, table_attrs(label))
        return record

    def _table_units(self, out: OutputPlan) -> dict[str, Any]:
        units = [out.axes[a].unit for a in self.plan.spatial]
        same = units[0] if len(set(units)) == 1 else None
        return {
            "centroid_physical": units,
            "volume": f"{same}^{len(units)}" if same else "*".join(str(u) for u in units),
        }

    def drop_scratch(self) -> None:
        """Remove the run's arrays and markers; keep its record (the group's metadata)."""
        where = self.ws.output
        for child in where.list_dirs(self.plan.scratch):
            where.delete_tree(f"{self.plan.scratch}/{child}")
