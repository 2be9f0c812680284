"""`run()`: the Python entry point that the CLI also uses.

Order matters for safety: everything that can be wrong with the input (config,
image, ROI, existing outputs) is checked before the first byte is written, so
a refused run leaves the input image and every existing output as they were.
"""

from __future__ import annotations

import datetime as dt
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from engine.core.errors import ConfigError, EngineError, OutputConflict
from engine.core.geometry import Roi
from engine.core.pipeline import Pipeline, RoiSpec
from engine.core.version import __version__
from engine.execute.cluster import (
    ClusterArg,
    check_resources,
    connect,
    plan_resources,
    worker_memory,
)
from engine.execute.executor import Executor, StageStats, TaskFailed
from engine.io.existing import read_existing
from engine.io.location import Location, Workspace
from engine.io.metadata import ImageMeta, open_group, read_image
from engine.io.models import write_model
from engine.io.ngff_write import (
    create_image,
    engine_attrs,
    fast_compressor,
    image_label_json,
    list_in_parent,
    set_engine_attrs,
)
from engine.io.output_store import prepare_store, source_image, workspace
from engine.io.preview import preview
from engine.io.rois import named_roi, resolve_roi, save_config_roi
from engine.io.tables import (
    import_in_background,
    merge_rows,
    read_rows,
    read_table,
    table_attrs,
    write_table,
)
from engine.plan.compiler import (
    ENGINE_GROUP,
    OutputPlan,
    Plan,
    compile_plan,
    face_array_layout,
    face_array_path,
    face_planes,
    layout_hash,
)
from engine.plan.memory import check_fits
from engine.plan.versions import describe_change
from engine.runs.evaluation import evaluation_attrs, roi_key, stored_scores
from engine.state.locks import OutputLocks, this_process
from engine.state.markers import Markers, drop_torn_writes
from engine.state.records import RunRecord, find_resumable, now
from tasks.evaluate import Scores, scores
from tasks.measure import table_columns

Mode = Literal["create", "overwrite", "update"]

RETRIES = 2  # a failing chunk task is tried this many more times before the run fails
BACKOFF = 0.2  # seconds before the first retry; doubled for each further one
RECORD_INTERVAL = 1.0  # seconds between writes of the running stages' counts to the record


@dataclass(frozen=True)
class RunResult:
    run_id: str
    image: str
    roi: Roi
    outputs: dict[str, str]
    stages: list[StageStats]
    seconds: float
    labels: dict[str, int] = field(default_factory=dict)
    merge: dict[str, dict[str, float]] = field(default_factory=dict)  # per global step
    peak_worker_bytes: dict[str, int] = field(default_factory=dict)  # per worker address
    projected_worker_bytes: int = 0  # engine/plan/memory.py, checked before the run
    reused: list[str] = field(default_factory=list)  # outputs read as they were, not computed
    evaluations: dict[str, Scores] = field(default_factory=dict)  # by table, on this ROI
    previews: dict[str, str] = field(default_factory=dict)  # by table: its PNG (preview: true)

    @property
    def tasks_done(self) -> int:
        """Chunk tasks this run computed (0 when every output was reused)."""
        return sum(s.done for s in self.stages)

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
            "reused": self.reused,
            "evaluations": {name: s.to_json() for name, s in self.evaluations.items()},
            "previews": self.previews,
            "tasks_done": self.tasks_done,
            "seconds": round(self.seconds, 3),
            "stages": [
                {
                    "name": s.name,
                    "kind": s.kind,
                    "tasks": s.tasks,
                    "done": s.done,
                    "seconds": round(s.seconds, 3),
                }
                for s in self.stages
            ],
            "merge": self.merge,
            "peak_worker_bytes": self.peak_worker_bytes,
            "projected_worker_bytes": self.projected_worker_bytes,
        }


def resolve_input(
    pipeline: Pipeline,
    input: str | Path | Location | None,
    storage_options: dict[str, Any] | None = None,
) -> Location:
    """The input image's location: `input`, else the config's; with the config's
    `storage_options` and then the caller's."""
    path = input if input is not None else pipeline.input
    if path is None:
        raise ConfigError("no input image: set 'input' in the config or pass --input")
    return Location.parse(path, {**pipeline.storage_options, **(storage_options or {})})


def resolve_workspace(
    pipeline: Pipeline,
    meta: ImageMeta,
    output: str | Path | Location | None,
    storage_options: dict[str, Any] | None = None,
    run_id: str = "",
    writing: bool = True,
) -> Workspace:
    """Where outputs and run state go: `output`, else the config's `output_store`, else
    the image (engine/io/output_store.py)."""
    where = output if output is not None else pipeline.output_store
    options = {**pipeline.storage_options, **(storage_options or {})}
    return workspace(meta, where, options, run_id, writing)


def roi_spec(
    pipeline: Pipeline,
    roi: str | RoiSpec | dict | None,
    image: str | None = None,
    ws: Workspace | None = None,
) -> tuple[str, RoiSpec | None]:
    """A name is looked up in the config's `rois:`, then in the ROI tables of the output
    store (when separate) and the image."""
    if roi is None:
        return "whole image", None
    if isinstance(roi, str):
        return roi, named_roi(pipeline, roi, image, ws.output if ws is not None else None)
    if isinstance(roi, dict):
        return "roi", RoiSpec.model_validate(roi)
    return "roi", roi


def make_plan(
    pipeline: Pipeline,
    input: str | Path | Location | None = None,
    roi: str | RoiSpec | dict | None = None,
    run_id: str = "plan",
    overwrite: bool = False,
    output: str | Path | Location | None = None,
    storage_options: dict[str, Any] | None = None,
) -> tuple[ImageMeta, Plan]:
    """The plan a run would follow: outputs stored for the same config and ROI are reused
    (not with `overwrite`), versions are named; see engine/plan/versions.py. `output`:
    a separate output store (engine/io/output_store.py)."""
    pipeline.check_complete()
    meta = read_image(resolve_input(pipeline, input, storage_options))
    ws = resolve_workspace(pipeline, meta, output, storage_options, writing=False)
    name, spec = roi_spec(pipeline, roi, meta.path, ws)
    level = {s.input_ref.level for s in pipeline.steps if s.source == "image"} or {0}
    box = resolve_roi(spec, meta, min(level), name)
    existing = read_existing(meta, pipeline, ws.output)
    return meta, compile_plan(pipeline, meta, box, run_id, __version__, existing, overwrite)


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
    resume: bool = False,
    retries: int = RETRIES,
    priority_roi: str | RoiSpec | dict | None = None,
    announce: Callable[[str], None] | None = None,
    output: str | Path | Location | None = None,
    storage_options: dict[str, Any] | None = None,
) -> RunResult:
    """Run a pipeline on an image (or an ROI of it) and write its outputs into the image's zarr.

    `cluster` ("local", "slurm", a dict of ClusterSpec fields or a ClusterSpec) overrides
    the pipeline's `cluster:` section; see engine/execute/cluster.py.

    Every chunk task marks its chunk done in `_engine/runs/<run_id>/markers` once written;
    `resume=True` continues the latest killed or failed run of the same outputs (its run
    id and scratch), skipping the chunks it marked, and refuses if the config, ROI or
    chunking differ. Outputs are locked for the run (`_engine/locks/`), and the run record
    (`_engine/runs/<run_id>` attributes) follows it; scratch is removed on success only.

    `priority_roi` (default: a config ROI with `preview: true`) is computed first in every
    stage, so its result is on disk early. Before any chunk runs, the plan's projected
    worker memory is checked against the workers' memory limit (engine/plan/memory.py).
    `announce` receives one-line notices for the user (the dask dashboard address).

    Outputs already stored for the same config (upstream chain included) and this ROI by
    a run that finished are reused, not computed (`overwrite=True` computes them again);
    a run with nothing left to compute starts no cluster. With `versions: keep` a changed
    config writes a new version of its output (engine/plan/versions.py).

    `input` and `output` are paths or URLs (http(s)://, s3://; engine/io/location.py);
    `output` (default: the config's `output_store`, else the image itself) is a separate
    OME-Zarr store for the outputs and run state (engine/io/output_store.py), needed when
    the image cannot be written. `storage_options` (fsspec; e.g. S3 `endpoint_url`) add
    to the config's.
    """
    if overwrite and update:
        raise ConfigError("--overwrite and --update exclude each other")
    if resume and (overwrite or update):
        raise ConfigError("--resume continues a run with its own --overwrite/--update choice")
    started = time.perf_counter()
    run_id = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:6]
    where = (output, storage_options)
    meta, plan = make_plan(pipeline, input, roi, run_id, overwrite, *where)
    ws = resolve_workspace(pipeline, meta, *where, run_id=run_id)
    old: dict[str, Any] | None = None
    if resume:
        old = find_resumable(ws.output, [o.path for o in plan.outputs])
        run_id = old["run_id"]
        overwrite, update = bool(old.get("overwrite")), bool(old.get("update"))
        meta, plan = make_plan(pipeline, input, roi, run_id, overwrite, *where)
        ws = resolve_workspace(pipeline, meta, *where, run_id=run_id)
    layout = layout_hash(plan)
    config = pipeline.to_dict()
    priority = priority_box(pipeline, priority_roi, meta, plan, ws)
    if old is not None:
        check_resumable(old, config, plan, layout)
    created = set(old.get("created", [])) if old else set()

    def decide() -> dict[str, Mode]:
        modes: dict[str, Mode] = {}
        for out in plan.outputs:
            before = old["modes"].get(out.step) if old else None
            if before in ("create", "update") or out.step in created:
                # a resumed run: its outputs are its own (the lock kept others away);
                # "create" also when it was killed between making one and recording that
                modes[out.step] = before if before == "update" else "create"
            else:
                modes[out.step] = check_output(ws, out, overwrite, update)
        return modes

    decide()  # refuse before writing anything, even a lock
    ws.output.check_writable()
    prepare_store(ws, meta)
    locks = OutputLocks(ws.output, [o.path for o in plan.outputs], run_id).acquire()
    try:
        modes = decide()  # again, under the locks: another run may have finished meanwhile
        if old is not None:
            drop_torn_writes(ws.output, [*(o.path for o in plan.outputs), plan.scratch])
        record = _start_record(
            meta, ws, plan, run_id, config, layout, modes, overwrite, update, old
        )
        writer = _OutputWriter(meta, plan, modes, run_id, record, created, old, ws)
        executor = None
        stage_rows = record.data["stages"]

        live = _LiveCounts(record, plan, stage_rows, progress)

        def on_stage(stat: StageStats) -> None:
            row = stage_rows.setdefault(stat.name, {"kind": stat.kind, "tasks": stat.tasks})
            row["seconds"] = round(row.get("seconds", 0.0) + stat.seconds, 3)
            row["done"], row["skipped"] = stat.done, stat.skipped
            row.pop("running", None)
            record.update(stages=stage_rows, **_totals(stage_rows))

        stages: list[StageStats] = []
        if any(out.kind == "table" for out in plan.outputs):
            import_in_background()
        try:
            projected = 0
            if plan.stages:  # else every output is reused: no cluster to start
                resources = plan_resources(plan)
                with connect(workers, scheduler, cluster, pipeline.cluster, resources) as client:
                    check_resources(client, plan)
                    limit, threads = worker_memory(client)
                    projected = check_fits(plan, limit, threads)
                    record.update(projected_worker_bytes=projected, worker_memory_limit=limit)
                    if announce is not None and client.dashboard_link:
                        announce(f"dask dashboard: {client.dashboard_link}")
                    markers = Markers(ws.output, plan, layout)
                    executor = Executor(
                        client,
                        ws,
                        plan,
                        writer.prepare,
                        live,
                        markers=markers,
                        retries=retries,
                        backoff=BACKOFF,
                        on_stage=on_stage,
                        priority=priority,
                    )
                    live.executor = executor
                    stages = executor.run()
                writer.finish(executor)
            # named config ROI -> tables/rois
            save_config_roi(pipeline, roi, meta, plan.roi, output=ws.output)
        except BaseException as exc:
            _fail_record(record, plan, ws.output, layout, stage_rows, executor, exc)
            raise
        record.update(
            state="completed",
            ended=now(),
            peak_worker_bytes=max(executor.peak_memory.values(), default=0) if executor else 0,
            **_totals(stage_rows),
        )
        writer.drop_scratch()
    finally:
        locks.release()
    every = (*plan.outputs, *plan.reused)
    outputs = {out.name: str(ws.output.child(out.path)) for out in every}
    labels = {
        next(o.name for o in plan.outputs if o.step == step): r.count
        for step, r in (executor.labels.items() if executor is not None else ())
        if any(o.step == step for o in plan.outputs)
    }
    evaluations = dict(writer.evaluations)
    key = roi_key(plan.roi, plan.axes)
    for out in plan.reused:
        found = stored_scores(ws.output.child(out.path), key) if out.op == "evaluate" else None
        if found is not None:
            evaluations[out.name] = found
    return RunResult(
        run_id,
        meta.path,
        plan.roi,
        outputs,
        stages,
        time.perf_counter() - started,
        labels,
        executor.merge_stats if executor is not None else {},
        executor.peak_memory if executor is not None else {},
        projected,
        [out.name for out in plan.reused],
        evaluations,
        dict(writer.previews),
    )


def priority_box(
    pipeline: Pipeline,
    roi: str | RoiSpec | dict | None,
    meta: ImageMeta,
    plan: Plan,
    ws: Workspace | None = None,
) -> Roi | None:
    """The box (plan work space) a run computes first: `roi`, else a config ROI marked
    `preview: true`; clipped to the run's ROI."""
    if roi is None:
        roi = next((name for name, spec in pipeline.rois.items() if spec.preview), None)
        if roi is None:
            return None
    name, spec = roi_spec(pipeline, roi, meta.path, ws)
    box = resolve_roi(spec, meta, plan.level, name)
    keep = [i for i in range(len(meta.axes)) if i != meta.channel_axis]
    work = Roi(tuple(box.start[i] for i in keep), tuple(box.stop[i] for i in keep), plan.level)
    return work.intersect(plan.roi)


def _roi_json(plan: Plan) -> dict[str, Any]:
    return {"start": list(plan.roi.start), "stop": list(plan.roi.stop), "level": plan.level}


def check_resumable(old: dict[str, Any], config: dict[str, Any], plan: Plan, layout: str) -> None:
    """Refuse to continue a run whose markers mean something else now, naming what changed."""
    run = old["run_id"]
    steps_old, steps_new = old.get("config", {}).get("steps"), config.get("steps")
    if steps_old != steps_new:
        change = describe_change({"steps": steps_old}, {"steps": steps_new})
        raise EngineError(
            f"--resume: run {run} had another step config ({change}); run without --resume "
            "(with --overwrite) to start over"
        )
    if old.get("roi") != _roi_json(plan):
        raise EngineError(
            f"--resume: run {run} was on ROI {old.get('roi')}, this run is on {_roi_json(plan)}"
        )
    if old.get("chunks") != list(plan.chunks):
        raise EngineError(
            f"--resume: run {run} used chunks {old.get('chunks')}, the image now has "
            f"{list(plan.chunks)}: chunking changed"
        )
    if old.get("layout_hash") != layout:
        raise EngineError(
            f"--resume: run {run} had plan layout {old.get('layout_hash')}, this plan has "
            f"{layout} (stages, chunk boxes or op versions changed)"
        )


def _start_record(
    meta: ImageMeta,
    ws: Workspace,
    plan: Plan,
    run_id: str,
    config: dict[str, Any],
    layout: str,
    modes: dict[str, Mode],
    overwrite: bool,
    update: bool,
    old: dict[str, Any] | None,
) -> RunRecord:
    if old is not None:
        # stages and chunk counts are the current attempt's; earlier ones go to `attempts`
        keys = ("started", "ended", "state", "error", "stages", "process")
        keys += ("chunks_done", "chunks_skipped", "chunks_failed")
        attempt = {k: old.get(k) for k in keys}
        data = dict(old)
        data.update(
            state="running",
            error=None,
            started=now(),
            ended=None,
            process=this_process(),
            stages={},
            attempts=[*old.get("attempts", []), attempt],
            chunks_done=0,
            chunks_skipped=0,
            chunks_failed=0,
        )
    else:
        data = {
            "run_id": run_id,
            "state": "running",
            "engine_version": __version__,
            "input": str(meta.path),
            "config": config,
            "roi": _roi_json(plan),
            "chunks": list(plan.chunks),
            "layout_hash": layout,
            "outputs": [o.path for o in plan.outputs],
            "config_hashes": {o.path: o.config_hash for o in plan.outputs},
            "reused": [o.path for o in plan.reused],
            "modes": modes,
            "overwrite": overwrite,
            "update": update,
            "created": [],
            "offsets": {},
            "started": now(),
            "ended": None,
            "process": this_process(),
            "stages": {},
            "tasks": plan.task_count,
            "error": None,
            "attempts": [],
        }
    if ws.separate and old is None:
        data["output_store"] = str(ws.output)
    record = RunRecord(ws.output, run_id, data)
    record.save()
    return record


class _LiveCounts:
    """The run's progress callback around the caller's: it also writes the chunk counts
    of the stages in progress (rows marked `running`) to the run record, at most once per
    RECORD_INTERVAL, so `ngff-engine status IMAGE` follows a run going on elsewhere (a
    batch job). The executor reports a stage only once it completes, and stages overlap."""

    def __init__(
        self,
        record: RunRecord,
        plan: Plan,
        rows: dict[str, dict[str, Any]],
        progress: Callable[[str, int], Callable[[int], None]] | None,
    ) -> None:
        self.record = record
        self.plan = plan
        self.rows = rows
        self.progress = progress
        self.executor: Executor | None = None
        self.saved = time.monotonic()

    def __call__(self, stage: str, total: int) -> Callable[[int], None]:
        advance = self.progress(stage, total) if self.progress is not None else None

        def step(n: int) -> None:
            if advance is not None:
                advance(n)
            self.save()

        return step

    def save(self) -> None:
        moment = time.monotonic()
        if self.executor is None or moment - self.saved < RECORD_INTERVAL:
            return
        self.saved = moment
        for name, (done, skipped) in self.executor.in_progress().items():
            stage = self.plan.stage(name)
            row = self.rows.setdefault(name, {"kind": stage.kind, "tasks": len(stage.tasks)})
            row.update(done=done, skipped=skipped, running=True)
        self.record.update(stages=self.rows, **_totals(self.rows))


def _totals(stage_rows: dict[str, dict[str, Any]]) -> dict[str, int]:
    return {
        "chunks_done": sum(r.get("done", 0) for r in stage_rows.values()),
        "chunks_skipped": sum(r.get("skipped", 0) for r in stage_rows.values()),
        "chunks_failed": sum(r.get("failed", 0) for r in stage_rows.values()),
    }


def _fail_record(
    record: RunRecord,
    plan: Plan,
    root: Location,
    layout: str,
    stage_rows: dict[str, dict[str, Any]],
    executor: Executor | None,
    exc: BaseException,
) -> None:
    """The record of a run that stopped: its error, and per stage the chunks marked done."""
    try:
        started = executor.in_progress() if executor is not None else {}
        finished = {s for s, r in stage_rows.items() if "done" in r and not r.get("running")}
        for name, (_, skipped) in started.items():
            if name in finished:
                continue
            stage = plan.stage(name)
            marked = len(Markers(root, plan, layout).done(stage).positions)
            row = stage_rows.setdefault(name, {"kind": stage.kind, "tasks": len(stage.tasks)})
            row["skipped"], row["done"] = skipped, max(0, marked - skipped)
            row["failed"] = 1 if isinstance(exc, TaskFailed) and exc.stage == name else 0
            row.pop("running", None)
        message = str(exc) or type(exc).__name__
        if not isinstance(exc, EngineError):
            message = f"{type(exc).__name__}: {message}"
        record.update(
            state="failed", error=message, ended=now(), stages=stage_rows, **_totals(stage_rows)
        )
    except Exception:  # never hide the run's own error behind one writing its record
        pass


def check_output(ws: Workspace, out: OutputPlan, overwrite: bool, update: bool) -> Mode:
    """Decide what happens to an output, refusing before anything is written."""
    path = ws.output.child(out.path)
    if not path.exists():
        return "create"
    if overwrite:
        return "overwrite"
    try:
        existing = engine_attrs(path.read_attrs() or {})
    except (OSError, ValueError):
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


class _OutputWriter:
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
        ws: Workspace | None = None,
    ) -> None:
        self.meta = meta
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
            if step in self.offsets:  # a resumed run keeps the offset it started with
                offset = int(self.offsets[step])
            elif self.modes[step] == "update":
                offset = int(engine_attrs(self.root[out.path]).get("max_label", 0))
            if self.record is not None and step not in self.offsets:
                self.offsets[step] = offset
                self.record.update(offsets=self.offsets)
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
        if step not in self.created:
            self._create(out, dtype)
            self.created.add(step)
            if self.record is not None:
                self.record.update(created=sorted(self.created))
        return offset

    def _scratch(self, path: str, dtype: str) -> None:
        level = self.meta.level(self.plan.level)
        keep = [i for i in range(len(self.meta.axes)) if i != self.meta.channel_axis]
        shape = tuple(level.shape[i] for i in keep)
        self._scratch_array(path, dtype, shape, self.plan.chunks)
        if path.endswith("/local"):
            stage = next(s for s in self.plan.stages if s.target == path)
            for axis in self.plan.spatial:
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
        )

    def _scratch_compressor(self, dtype: str) -> Any:
        """Floats (e.g. a smoothed image) barely compress: raw; ids compress well."""
        if np.dtype(dtype).kind == "f":
            return None
        return fast_compressor(dtype, self.root.metadata.zarr_format)

    def _create(self, out: OutputPlan, dtype: str) -> None:
        version = self.meta.version
        extra = {}
        if out.kind == "label":
            extra = image_label_json(version, source_image(self.ws, 2))
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
        models = {
            out.step: write_model(self.ws.output, self.root, out.path, executor.models[out.step])
            for out in self.plan.outputs
            if out.kind == "model"
        }
        for out in self.plan.outputs:
            group = self.root[out.path]
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

    def _preview(self, out: OutputPlan, labels: str, key: str) -> str:
        """A PNG of the run's ROI with the evaluated labels outlined (engine/io/preview.py),
        in `_engine/previews/`; returns its path."""
        box = {
            a: [int(lo), int(hi)]
            for a, lo, hi in zip(
                self.plan.axes, self.plan.roi.start, self.plan.roi.stop, strict=True
            )
            if a in "zyx"
        }
        box["level"] = self.plan.level
        target = self.ws.output.child(f"{ENGINE_GROUP}/previews/{out.name}_{key}.png")
        name = labels.removeprefix("labels/")
        preview(self.ws, target, box, name, level=self.plan.level)
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
                self.previews[out.name] = self._preview(out, provenance["labels"], key)
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


def _label_dtype(count: int) -> str:
    return "uint32" if count < 2**32 else "uint64"
