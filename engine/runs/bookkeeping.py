"""The run record (`_engine/runs/<run_id>` attributes, engine/state/records.py) through
a run: started, followed stage by stage (also while stages are running, so `status`
follows a run going on elsewhere), and ended as completed or failed; and the check that
a run to be resumed still means the same thing.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from typing import Any, Literal

from engine.core.errors import EngineError
from engine.core.version import __version__
from engine.execute.executor import Executor, TaskFailed
from engine.io.location import Location, Workspace
from engine.io.metadata import ImageMeta
from engine.plan.types import Plan
from engine.plan.versions import describe_change
from engine.state.markers import Markers
from engine.state.processes import this_process
from engine.state.records import RunRecord, now

Mode = Literal["create", "overwrite", "update"]

RECORD_INTERVAL = 1.0  # seconds between writes of the running stages' counts to the record


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
    if old.get("roi") != plan.roi.to_json():
        raise EngineError(
            f"--resume: run {run} was on ROI {old.get('roi')}, this run is on {plan.roi.to_json()}"
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


def start_record(
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
            "roi": plan.roi.to_json(),
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


class LiveCounts:
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
        self.record.update(stages=self.rows, **totals(self.rows))


def totals(stage_rows: dict[str, dict[str, Any]]) -> dict[str, int]:
    return {
        "chunks_done": sum(r.get("done", 0) for r in stage_rows.values()),
        "chunks_skipped": sum(r.get("skipped", 0) for r in stage_rows.values()),
        "chunks_failed": sum(r.get("failed", 0) for r in stage_rows.values()),
    }


def fail_record(
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
        state = "failed"
        if isinstance(exc, KeyboardInterrupt):  # Ctrl-C or SIGTERM: stopped, not broken
            state = "killed"
            signum = getattr(exc, "signum", signal.SIGINT)
            message = f"interrupted by {signal.Signals(signum).name}"
        record.update(
            state=state, error=message, ended=now(), stages=stage_rows, **totals(stage_rows)
        )
    except Exception:  # never hide the run's own error behind one writing its record
        pass
