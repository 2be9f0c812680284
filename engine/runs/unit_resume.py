"""`--resume` over a collection run (a plate, a well, a list of images, an ROI table):
what each unit does when the collection run is started again.

A collection run has no record of its own: each unit is a run with its own record in
its image (`_engine/runs/<run_id>`, engine/state/records.py), and those records say
everything a resume needs. For each unit, the latest record of its outputs on its ROI:

- `completed` with the same step config: the unit is done; it is not run again (its
  result is read from the record: reused, no chunk tasks);
- `killed` or `failed`: the unit is resumed (`run(resume=True)`: its markers skip the
  chunks already written; the record's config, ROI and layout must still match);
- `running` in a live process: refused (another run is writing it);
- none (the unit never started), or a completed run of another config: run from the
  start, with the `--overwrite`/`--update` choice of the collection run, read from the
  records of the units that did start.

A resume where no unit of the collection has a record of these outputs is refused: there
is nothing to continue (run without --resume).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from engine.core.errors import ConfigError, EngineError
from engine.core.pipeline import Pipeline
from engine.plan.fingerprint import layout_hash
from engine.plan.types import Plan
from engine.runs.bookkeeping import check_resumable
from engine.runs.planning import make_plan
from engine.runs.result import RunResult
from engine.runs.unit_plans import UnitPlan, check_outputs
from engine.runs.work_unit import Unit
from engine.state.records import list_runs

Action = Literal["done", "resume", "fresh"]


@dataclass(frozen=True)
class Resumption:
    """What a unit does on `--resume`, and the record that says so (None: no record)."""

    action: Action
    record: dict[str, Any] | None = None


def latest_record(image: str, plan: Plan) -> dict[str, Any] | None:
    """The latest run record of the plan's outputs on the plan's ROI in `image`."""
    paths = {o.path for o in (*plan.outputs, *plan.reused)}
    roi = plan.roi.to_json()
    found = [
        r
        for r in list_runs(image)
        if (set(r.get("outputs", [])) | set(r.get("reused", []))) & paths and r.get("roi") == roi
    ]
    return found[-1] if found else None


def decide(unit: Unit, plan: Plan, config: dict[str, Any]) -> Resumption:
    """What `unit` does on --resume, given its plan and the config it runs."""
    record = latest_record(unit.image.path, plan)
    if record is None:
        if not plan.stages and plan.reused:  # every output stored by a finished run
            return Resumption("done")
        return Resumption("fresh")
    state = record.get("state")
    if state == "running":
        raise EngineError(
            f"{unit.label}: run {record.get('run_id')} is still running on its outputs; "
            "wait for it (or stop it) before --resume"
        )
    if state == "completed":
        same = record.get("config", {}).get("steps") == config.get("steps")
        return Resumption("done" if same else "fresh", record)
    return Resumption("resume", record)


def collection_flags(decisions: list[tuple[Unit, Resumption]], source: Any) -> tuple[bool, bool]:
    """The collection run's (overwrite, update), read from the records of the first unit
    of each image that started; refused when no unit started."""
    seen: set[str] = set()
    firsts = []
    for unit, decision in decisions:
        if unit.image.path in seen:
            continue
        seen.add(unit.image.path)
        if decision.record is not None:
            firsts.append(decision.record)
    if not firsts and not any(d.action == "done" for _, d in decisions):
        raise EngineError(
            f"--resume: no image of {source} has an interrupted or finished run of these "
            "outputs on this ROI; run without --resume"
        )
    return any(bool(r.get("overwrite")) for r in firsts), any(bool(r.get("update")) for r in firsts)


def check_resume_supported(units: list[Unit]) -> None:
    if any(u.mask is not None for u in units):
        raise ConfigError(
            "--resume with a masking ROI table is not supported: a masked unit keeps the "
            "outputs' earlier voxels in memory while it runs; run it again with --overwrite"
        )


def resumptions(
    plans: list[UnitPlan],
    pipeline_for: Callable[[Unit], Pipeline],
    resume: bool,
    overwrite: bool,
    update: bool,
    source: Any,
) -> tuple[list[Resumption], bool, bool]:
    """What each unit does (all "fresh" unless `resume`: engine/runs/unit_resume.py), and
    the collection's (overwrite, update); refused before any unit runs."""
    if not resume:
        return [Resumption("fresh")] * len(plans), overwrite, update
    decisions = [decide(p.unit, p.plan, pipeline_for(p.unit).to_dict()) for p in plans]
    units = [p.unit for p in plans]
    overwrite, update = collection_flags(list(zip(units, decisions, strict=True)), source)
    fresh = {k for k, d in enumerate(decisions) if d.action == "fresh"}
    check_outputs(plans, overwrite, update, only=fresh)
    for p, d in zip(plans, decisions, strict=True):
        if d.action == "resume":
            check_resume(pipeline_for(p.unit), p, d)
    return decisions, overwrite, update


def check_resume(pipeline: Pipeline, unit_plan: UnitPlan, decision: Resumption) -> None:
    """The interrupted run of a unit still means the same (config, ROI, layout): refused
    here, before any unit runs, naming the unit."""
    record = decision.record or {}
    try:
        _, plan = make_plan(
            pipeline, unit_plan.unit.image.path, unit_plan.unit.roi, record["run_id"],
            bool(record.get("overwrite")),
        )  # fmt: skip
        check_resumable(record, pipeline.to_dict(), plan, layout_hash(plan))
    except EngineError as exc:
        raise type(exc)(f"{unit_plan.unit.label}: {exc}") from None


def done_result(unit_plan: UnitPlan, decision: Resumption) -> RunResult:
    """A unit found complete on --resume: its outputs as its run left them."""
    plan, record = unit_plan.plan, decision.record or {}
    every = (*plan.outputs, *plan.reused)
    outputs = {o.name: str(Path(unit_plan.unit.image.path) / o.path) for o in every}
    return RunResult(
        str(record.get("run_id", "")), unit_plan.unit.image.path, plan.roi, outputs, [], 0.0,
        reused=list(outputs),
    )  # fmt: skip


def id_range(k: int, units: list[Unit], decisions: list[Resumption]) -> tuple[int, float] | None:
    """The label ids unit `k` (found done on --resume) wrote: from the id offset its run
    record kept (engine/runs/outputs.py) to the next offset of its image's other units'
    records; an ROI's objects are numbered after those of the ROIs before it."""
    record = decisions[k].record
    if record is None or not record.get("offsets"):
        return None
    step = next(iter(record["offsets"]))  # the (first) label step
    low = int(record["offsets"][step])
    later = [
        int(d.record["offsets"][step])
        for j, d in enumerate(decisions)
        if j != k
        and units[j].image.path == units[k].image.path
        and d.record is not None
        and step in d.record.get("offsets", {})
        and int(d.record["offsets"][step]) > low
    ]
    return low, float(min(later, default=float("inf")))
