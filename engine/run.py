"""`run()`: the Python entry point that the CLI also uses.

Order matters for safety: everything that can be wrong with the input (config,
image, ROI, existing outputs) is checked before the first byte is written, so
a refused run leaves the input image and every existing output as they were.
"""

from __future__ import annotations

import datetime as dt
import shutil
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import zarr

from engine.errors import ConfigError, OutputConflict
from engine.execute.cluster import ClusterArg, connect
from engine.execute.executor import Executor, StageStats
from engine.geometry import Roi
from engine.ngff.metadata import ImageMeta, open_group, read_image
from engine.ngff.tables import merge_rows, read_table, table_attrs, write_table
from engine.ngff.write import (
    create_image,
    engine_attrs,
    image_label_json,
    list_in_parent,
    set_engine_attrs,
)
from engine.pipeline import Pipeline, RoiSpec
from engine.plan import OutputPlan, Plan, compile_plan, face_array_layout, face_array_path
from engine.rois import named_roi, resolve_roi
from engine.version import __version__
from tasks.measure import table_columns

Mode = Literal["create", "overwrite", "update"]


@dataclass(frozen=True)
class RunResult:
    run_id: str
    image: str
    roi: Roi
    outputs: dict[str, str]
    stages: list[StageStats]
    seconds: float
    labels: dict[str, int] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "image": self.image,
            "roi": {
                "start": list(self.roi.start),
                "stop": list(self.roi.stop),
                "level": self.roi.level,
            },
            "outputs": self.outputs,
            "objects": self.labels,
            "seconds": round(self.seconds, 3),
            "stages": [
                {"name": s.name, "kind": s.kind, "tasks": s.tasks, "seconds": round(s.seconds, 3)}
                for s in self.stages
            ],
        }


def resolve_input(pipeline: Pipeline, input: str | Path | None) -> str:
    path = input if input is not None else pipeline.input
    if path is None:
        raise ConfigError("no input image: set 'input' in the config or pass --input")
    return str(Path(path))


def roi_spec(pipeline: Pipeline, roi: str | RoiSpec | dict | None) -> tuple[str, RoiSpec | None]:
    if roi is None:
        return "whole image", None
    if isinstance(roi, str):
        return roi, named_roi(pipeline, roi)
    if isinstance(roi, dict):
        return "roi", RoiSpec.model_validate(roi)
    return "roi", roi


def make_plan(
    pipeline: Pipeline,
    input: str | Path | None = None,
    roi: str | RoiSpec | dict | None = None,
    run_id: str = "plan",
) -> tuple[ImageMeta, Plan]:
    pipeline.check_complete()
    meta = read_image(resolve_input(pipeline, input))
    name, spec = roi_spec(pipeline, roi)
    level = {s.input_ref.level for s in pipeline.steps if s.source == "image"} or {0}
    box = resolve_roi(spec, meta, min(level), name)
    return meta, compile_plan(pipeline, meta, box, run_id, __version__)


def run(
    pipeline: Pipeline,
    input: str | Path | None = None,
    roi: str | RoiSpec | dict | None = None,
    workers: int | None = None,
    overwrite: bool = False,
    update: bool = False,
    scheduler: str | None = None,
    progress: Callable[[str, int], Callable[[int], None]] | None = None,
    cluster: ClusterArg = None,
) -> RunResult:
    """Run a pipeline on an image (or an ROI of it) and write its outputs into the image's zarr.

    `cluster` ("local", "slurm", a dict of ClusterSpec fields or a ClusterSpec) overrides
    the pipeline's `cluster:` section; see engine/execute/cluster.py.
    """
    if overwrite and update:
        raise ConfigError("--overwrite and --update exclude each other")
    started = time.perf_counter()
    run_id = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:6]
    meta, plan = make_plan(pipeline, input, roi, run_id)
    modes = {out.step: check_output(meta, out, overwrite, update) for out in plan.outputs}
    writer = _OutputWriter(meta, plan, modes, run_id)
    try:
        with connect(workers, scheduler, cluster, pipeline.cluster) as client:
            executor = Executor(client, meta.path, plan, writer.prepare, progress)
            stages = executor.run()
        writer.finish(executor)
    finally:
        writer.drop_scratch()
    outputs = {out.name: str(Path(meta.path) / out.path) for out in plan.outputs}
    labels = {
        next(o.name for o in plan.outputs if o.step == step): r.count
        for step, r in executor.labels.items()
        if any(o.step == step for o in plan.outputs)
    }
    return RunResult(
        run_id, meta.path, plan.roi, outputs, stages, time.perf_counter() - started, labels
    )


def check_output(meta: ImageMeta, out: OutputPlan, overwrite: bool, update: bool) -> Mode:
    """Decide what happens to an output, refusing before anything is written."""
    path = Path(meta.path) / out.path
    if not path.exists():
        return "create"
    if overwrite:
        return "overwrite"
    try:
        existing = engine_attrs(zarr.open_group(str(path), mode="r"))
    except (OSError, ValueError, zarr.errors.BaseZarrError):
        existing = {}
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
    if not update:
        raise OutputConflict(
            f"output {out.path} exists (same config); use --update to add this ROI to it "
            "or --overwrite to replace it"
        )
    return "update"


def describe_change(old: dict[str, Any], new: dict[str, Any]) -> str:
    """The first few differences between two provenance records, as `where: old -> new`."""
    diffs: list[str] = []

    def walk(a: Any, b: Any, where: str) -> None:
        if isinstance(a, dict) and isinstance(b, dict):
            for key in sorted(set(a) | set(b), key=str):
                walk(a.get(key), b.get(key), f"{where}.{key}" if where else str(key))
        elif isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
            for i, (x, y) in enumerate(zip(a, b, strict=True)):
                name = x.get("name") if isinstance(x, dict) else None
                walk(x, y, f"{where}[{name or i}]")
        elif a != b:
            diffs.append(f"{where}: {a!r} -> {b!r}")

    walk(old, new, "")
    return (
        "; ".join(diffs[:3]) + (" ..." if len(diffs) > 3 else "") if diffs else "unknown difference"
    )


class _OutputWriter:
    """Creates outputs when their first stage starts and records provenance at the end."""

    def __init__(self, meta: ImageMeta, plan: Plan, modes: dict[str, Mode], run_id: str) -> None:
        self.meta = meta
        self.plan = plan
        self.modes = modes
        self.run_id = run_id
        self.by_step = {out.step: out for out in plan.outputs}
        self.offsets: dict[str, int] = {}
        self.max_labels: dict[str, int] = {}
        self.root = open_group(meta.path, mode="r+")

    def prepare(self, key: str, dtype: str | None, count: int | None) -> int:
        """Create the array a stage writes; for label outputs return the id offset."""
        step, _, part = key.partition("/")
        if part in ("local", "input"):
            self._scratch(f"{self.plan.scratch}/{step}/{part}", dtype)
            return 0
        out = self.by_step.get(step)
        if out is None:
            if count is not None:
                self._scratch(f"{self.plan.scratch}/{step}/final", _label_dtype(count))
            return 0
        offset = 0
        if out.kind == "label" and count is not None:
            if self.modes[step] == "update":
                offset = int(engine_attrs(self.root[out.path]).get("max_label", 0))
            dtype = _label_dtype(count + offset)
            self.max_labels[step] = count + offset
        if self.modes[step] == "update":
            existing = self.root[f"{out.path}/{out.levels[0].path}"]
            if np.dtype(existing.dtype).itemsize < np.dtype(dtype).itemsize:
                raise OutputConflict(
                    f"output {out.path} holds {existing.dtype} ids; {count + offset} objects need "
                    f"{dtype}: use --overwrite"
                )
            return offset
        self._create(out, dtype)
        return offset

    def _scratch(self, path: str, dtype: str) -> None:
        level = self.meta.level(self.plan.level)
        keep = [i for i in range(len(self.meta.axes)) if i != self.meta.channel_axis]
        shape = tuple(level.shape[i] for i in keep)
        self._scratch_array(path, dtype, shape, self.plan.chunks)
        if path.endswith("/local"):
            for axis in self.plan.spatial:
                face_shape, face_chunks = face_array_layout(shape, self.plan.chunks, axis)
                self._scratch_array(face_array_path(path, axis), dtype, face_shape, face_chunks)

    def _scratch_array(
        self, path: str, dtype: str, shape: tuple[int, ...], chunks: tuple[int, ...]
    ) -> None:
        self.root.create_array(
            path,
            shape=shape,
            chunks=chunks,
            dtype=dtype,
            fill_value=0,
            overwrite=True,
            compressors=None if np.dtype(dtype).kind == "f" else "auto",
        )

    def _create(self, out: OutputPlan, dtype: str) -> None:
        version = self.meta.version
        extra = image_label_json(version) if out.kind == "label" else {}
        create_image(
            self.root,
            out.path,
            version=version,
            axes=out.axes,
            levels=out.levels,
            dtype=dtype,
            name=out.name,
            method="nearest" if out.kind == "label" else "mean",
            extra_ome=extra,
        )
        list_in_parent(self.root, out.kind, out.name, version)

    def finish(self, executor: Executor) -> None:
        now = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
        roi = {
            "start": list(self.plan.roi.start),
            "stop": list(self.plan.roi.stop),
            "level": self.plan.level,
        }
        previous = {
            out.step: self._write_table(out, executor)
            for out in self.plan.outputs
            if out.kind == "table"
        }
        for out in self.plan.outputs:
            group = self.root[out.path]
            if out.step in previous:
                record = previous[out.step]
            else:
                record = engine_attrs(group) if self.modes[out.step] == "update" else {}
            runs = [*record.get("runs", []), {"run_id": self.run_id, "roi": roi, "time": now}]
            record = {
                "engine_version": __version__,
                "config_hash": out.config_hash,
                "provenance": out.provenance,
                "source": {"image": "../../"},
                "runs": runs,
            }
            if out.step in self.max_labels:
                record["max_label"] = self.max_labels[out.step]
            if out.kind == "table":
                record["units"] = self._table_units(out)
            set_engine_attrs(group, record)

    def _write_table(self, out: OutputPlan, executor: Executor) -> dict[str, Any]:
        """Write a measurement table (merging rows into it on --update); return the
        provenance record it had before, for the run list."""
        spatial = self.plan.spatial
        level = out.levels[0]
        new = table_columns(
            executor.measurements[out.step],
            [level.scale[a] for a in spatial],
            [level.translation[a] for a in spatial],
        )
        record: dict[str, Any] = {}
        if self.modes[out.step] == "update":
            record = engine_attrs(self.root[out.path])
            new = merge_rows(read_table(Path(self.meta.path) / out.path), new)
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
        scratch = Path(self.meta.path) / self.plan.scratch
        if scratch.exists():
            shutil.rmtree(scratch)


def _label_dtype(count: int) -> str:
    return "uint32" if count < 2**32 else "uint64"
