"""`run()`: the Python entry point that the CLI also uses.

Order matters for safety: everything that can be wrong with the input (config,
image, ROI, existing outputs) is checked before the first byte is written, so
a refused run leaves the input image and every existing output as they were.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from engine.core.errors import OutputConflict, in_python_terms
from engine.core.pipeline import Pipeline, RoiSpec
from engine.core.preload import import_in_background
from engine.execute.executor import Executor, StageStats
from engine.execute.placement import (
    ClusterArg,
    check_resources,
    plan_resources,
    resolve_cluster,
    small_enough,
)
from engine.execute.run_pool import task_pool
from engine.io.existing import ids_left_by_earlier_runs
from engine.io.location import Location
from engine.io.output_store import prepare_store
from engine.io.rois import save_config_roi
from engine.plan.fingerprint import layout_hash
from engine.plan.kinds import driver_modules, op_modules
from engine.plan.memory import check_fits, largest_read
from engine.plan.types import Plan
from engine.runs.bookkeeping import (
    LiveCounts,
    Mode,
    check_resumable,
    fail_record,
    start_record,
    totals,
)
from engine.runs.evaluation import roi_key, stored_scores
from engine.runs.outputs import OutputWriter, check_flags, check_output
from engine.runs.planning import make_plan, priority_box, resolve_workspace
from engine.runs.result import RunResult
from engine.runs.staging import (
    STAGED_KINDS,
    drop_stale_siblings,
    staged_plan,
    staging_path,
    swap_in,
)
from engine.state.locks import OutputLocks
from engine.state.markers import Markers, drop_torn_writes
from engine.state.records import RunRecord, find_resumable, interrupted_run, now


def uses_user_code(plan: Plan) -> bool:
    """Whether a plan calls user functions (op `function`, imported by module name)."""
    return any(link.op == "function" for stage in plan.stages for link in stage.chain)


RETRIES = 2  # a failing chunk task is tried this many more times before the run fails
BACKOFF = 0.2  # seconds before the first retry; doubled for each further one


def _staged(
    plan: Plan,
    modes: dict[str, Mode],
    run_id: str,
    old: dict[str, Any] | None,
    where: Location | None = None,
) -> dict[str, str]:
    """The outputs this run writes beside the old ones (engine/runs/staging.py): those it
    overwrites, or for a resumed run those the run it continues staged. None in an object
    store (`where` remote): it has no rename to swap folders with, so an overwrite there
    writes in place, as before staging existed."""
    if old is not None and "staged" in old:
        return dict(old["staged"] or {})
    if where is not None and not where.is_local:
        return {}
    return {
        out.path: staging_path(out.path, run_id)
        for out in plan.outputs
        if modes[out.step] == "overwrite" and out.kind in STAGED_KINDS
    }


def _finish_swap(
    record: RunRecord,
    root: Location,
    plan: Plan,
    staged: dict[str, str],
    run_id: str,
    started: float,
) -> RunResult:
    """Resume a run killed while it swapped its new outputs in: every chunk and its
    provenance were written; only the swaps remain."""
    swap_in(root, staged, run_id)
    record.update(state="completed", ended=now())
    outputs = {out.name: str(root.child(out.path)) for out in (*plan.outputs, *plan.reused)}
    return RunResult(run_id, str(root), plan.roi, outputs, [], time.perf_counter() - started)


def unfinished_run_conflict(root: str | Location, output: str) -> OutputConflict | None:
    """The refusal for an output left by a run that was killed (and none finished it
    since): `--resume` continues that run."""
    found = interrupted_run(root, output)
    if found is None:
        return None
    return OutputConflict(
        f"output {output}: run {found['run_id']} writing it was killed before it finished; "
        "--resume continues it (or --overwrite starts over)"
    )


@in_python_terms
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
    warm: bool | None = None,
    idle_timeout: float | None = None,
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

    A local run goes to the warm engine (engine/execute/warm.py): one per user, started
    on first use, reused by later runs and calls, stopped after `idle_timeout` seconds
    without work; `warm=False` (or NGFF_ENGINE_WARM=0) starts a cluster for this run
    only. A pipeline calling user functions (op `function`) runs on a cluster of its
    own unless `warm=True`: the warm workers would keep the first version they imported.

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
    check_flags(overwrite, update, resume)
    started = time.perf_counter()
    run_id = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:6]
    where = (output, storage_options)
    meta, plan = make_plan(pipeline, input, roi, run_id, overwrite, *where)
    spec = resolve_cluster(pipeline.cluster, cluster)
    in_process = small_enough(spec, largest_read(plan))  # engine/execute/placement.py
    # what the driver (and, on threads of this process, the ops) will import loads while
    # this thread checks outputs and writes its locks and record (file operations, GIL
    # released): 64x256x256 sample, seven runs each in turn, median 0.88 s from start to
    # exit against 0.93 s when started just before the pool
    ahead = driver_modules(plan.stages) + (op_modules(plan.stages) if in_process else [])
    import_in_background(dict.fromkeys(ahead))
    ws = resolve_workspace(pipeline, meta, *where, run_id=run_id)
    old: dict[str, Any] | None = None
    if resume:
        old = find_resumable(ws.output, [o.path for o in plan.outputs])
        run_id = old["run_id"]
        overwrite, update = bool(old.get("overwrite")), bool(old.get("update"))
        meta, plan = make_plan(pipeline, input, roi, run_id, overwrite, *where)
        ws = resolve_workspace(pipeline, meta, *where, run_id=run_id)
        in_process = small_enough(spec, largest_read(plan))
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
                try:
                    modes[out.step] = check_output(ws, out, overwrite, update)
                except OutputConflict as exc:
                    raise unfinished_run_conflict(ws.output, out.path) or exc from None
        return modes

    decide()  # refuse before writing anything, even a lock
    ws.output.check_writable()
    prepare_store(ws, meta)
    locks = OutputLocks(ws.output, [o.path for o in plan.outputs], run_id).acquire()
    try:
        modes = decide()  # again, under the locks: another run may have finished meanwhile
        staged = _staged(plan, modes, run_id, old, ws.output)
        if old is not None:
            outputs = [*(o.path for o in plan.outputs), *staged.values()]
            drop_torn_writes(ws.output, [*outputs, plan.scratch])
        else:
            for output, sibling in staged.items():
                drop_stale_siblings(ws.output, output, keep=sibling)
        plan = staged_plan(plan, staged)
        record = start_record(meta, ws, plan, run_id, config, layout, modes, overwrite, update, old)
        record.update(staged=staged)
        if old is not None and old.get("swapping"):
            return _finish_swap(record, ws.output, plan, staged, run_id, started)
        writer = OutputWriter(meta, plan, modes, run_id, record, created, old, staged, ws)
        executor = None
        stage_rows = record.data["stages"]

        live = LiveCounts(record, plan, stage_rows, progress)

        def on_stage(stat: StageStats) -> None:
            row = stage_rows.setdefault(stat.name, {"kind": stat.kind, "tasks": stat.tasks})
            row["seconds"] = round(row.get("seconds", 0.0) + stat.seconds, 3)
            row["done"], row["skipped"] = stat.done, stat.skipped
            row["cpu"] = stat.cpu
            row.pop("running", None)
            record.update(stages=stage_rows, **totals(stage_rows))

        stages: list[StageStats] = []
        try:
            projected = 0
            if plan.stages:  # else every output is reused: no cluster to start
                resources = plan_resources(plan)
                if warm is None and uses_user_code(plan):
                    warm = False
                with task_pool(
                    workers,
                    scheduler,
                    cluster,
                    pipeline.cluster,
                    resources,
                    warm,
                    idle_timeout,
                    in_process,
                ) as pool:
                    check_resources(pool, plan)
                    limit, threads = pool.memory()
                    projected = check_fits(plan, limit, threads)
                    record.update(projected_worker_bytes=projected, worker_memory_limit=limit)
                    if announce is not None and pool.dashboard_link:
                        announce(f"dask dashboard: {pool.dashboard_link}")
                    markers = Markers(ws.output, plan, layout)
                    executor = Executor(
                        pool,
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
                    for stat in stages:  # CPU with the driver's time after each completed
                        if stat.name in stage_rows:
                            stage_rows[stat.name]["cpu"] = stat.cpu
                writer.finish(executor)
            # a named config ROI -> tables/rois
            save_config_roi(pipeline, roi, meta, plan.roi, output=ws.output)
            if staged:  # the new outputs are complete: in place of the old ones, one step each
                record.update(swapping=True)
                swap_in(ws.output, staged, run_id)
        except BaseException as exc:
            fail_record(record, plan, ws.output, layout, stage_rows, executor, exc)
            if not isinstance(exc, KeyboardInterrupt):  # a killed run resumes as it stands
                with contextlib.suppress(OSError):  # never hide the run's own error
                    writer.undo_unwritten()
            if isinstance(exc, KeyboardInterrupt):
                exc.run_id = run_id  # type: ignore[attr-defined]  # for the CLI's one line
            raise
        record.update(
            state="completed",
            ended=now(),
            peak_worker_bytes=max(executor.peak_memory.values(), default=0) if executor else 0,
            **totals(stage_rows),
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
    by_name = {o.name: o for o in plan.outputs}
    in_output = {  # after an update: this ROI's objects and those earlier runs left
        name: count
        + ids_left_by_earlier_runs(
            ws.output, by_name[name].path, by_name[name].levels[0].path, plan.roi, run_id
        )
        for name, count in labels.items()
        if modes.get(by_name[name].step) == "update"
    }
    evaluations = dict(writer.evaluations)
    key = roi_key(plan.roi, plan.axes)
    for out in plan.reused:
        found = stored_scores(ws.output.child(out.path), key) if out.op == "evaluate" else None
        if found is not None:
            evaluations[out.name] = found
    previous = {}
    for out in plan.outputs:  # a new version of an evaluation: the one before, same ROI
        before = (out.version or {}).get("previous")
        if out.op == "evaluate" and before and out.name in evaluations:
            path = ws.output.child(f"{Path(out.path).parent}/{before}")
            found = stored_scores(path, key) if path.exists() else None
            if found is not None:
                previous[out.name] = (before, found)
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
        in_output,
        previous,
    )
