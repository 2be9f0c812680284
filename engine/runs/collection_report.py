"""`plan` and `status` over a collection (a plate, a well, a list or glob of images, the
ROIs of an ROI table): one row per unit and the totals.

`plan` compiles every unit's plan as `run` does before it writes anything
(engine/runs/unit_plans.py), so bad input anywhere in the plate is refused naming the
unit, and reports per unit its chunk tasks and projected worker memory; the totals are
the sum of the tasks and the largest projection (a worker runs one task per thread,
whichever unit it belongs to, so the units' projections do not add up).

`status` reads each image's run records (engine/state/records.py): the latest run's
state and its chunk tasks done of all, or "not started".
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.core.errors import ConfigError, OutputConflict
from engine.core.pipeline import Pipeline
from engine.io.location import Workspace
from engine.io.plates import collection_images, is_collection
from engine.io.rois import UserRoi
from engine.plan.report import summarize
from engine.runs.outputs import check_output
from engine.runs.unit_plans import UnitPlan, check_outputs, compile_units, plan_units
from engine.runs.units import resolve_units
from engine.state.records import list_runs


@dataclass
class CollectionPlan:
    """Every unit's plan, what `run` would refuse about its outputs, and the totals."""

    plans: list[UnitPlan]
    refusals: dict[int, list[str]] = field(default_factory=dict)  # unit index -> messages
    seconds: float = 0.0

    @property
    def tasks(self) -> int:
        return sum(p.tasks for p in self.plans)

    @property
    def projected_bytes(self) -> int:
        return max((p.projected_bytes for p in self.plans), default=0)

    def to_json(self) -> dict[str, Any]:
        return {
            "units": [
                {
                    "unit": p.unit.label,
                    "image": p.unit.image.path,
                    "roi": str(p.plan.roi),
                    "tasks": p.tasks,
                    "projected_worker_bytes": p.projected_bytes,
                    "stages": summarize(p.plan),
                    "reused": [o.path for o in p.plan.reused],
                    "run_refuses": self.refusals.get(k, []),
                }
                for k, p in enumerate(self.plans)
            ],
            "tasks": self.tasks,
            "projected_worker_bytes": self.projected_bytes,
            "plan_seconds": round(self.seconds, 3),
        }


def plan_collection(
    pipeline: Pipeline,
    input: Any,
    roi: UserRoi = None,
    roi_table: str | None = None,
    wells: Sequence[str] | None = None,
    fields: Sequence[str] | None = None,
    roi_overlap: str = "refuse",
) -> CollectionPlan:
    """The plan of a collection run, made as `run` makes it (nothing is written)."""
    started = time.perf_counter()
    source, table, roi = resolve_units(pipeline, input, roi, roi_table)
    if source is None:
        raise ConfigError("no input image: set 'input' in the config or pass --input")
    pipeline.check_complete()
    units = plan_units(pipeline, collection_images(source, wells, fields), roi, table, roi_overlap)
    plans = compile_units(pipeline, units, overwrite=False)
    refusals: dict[int, list[str]] = {}
    first: set[str] = set()
    for k, unit_plan in enumerate(plans):
        if unit_plan.unit.image.path in first:
            continue
        first.add(unit_plan.unit.image.path)
        ws = Workspace.of(unit_plan.meta.location)
        for out in unit_plan.plan.outputs:
            try:
                check_output(ws, out, overwrite=False, update=False)
            except OutputConflict as exc:
                refusals.setdefault(k, []).append(str(exc))
    return CollectionPlan(plans, refusals, time.perf_counter() - started)


def is_collection_path(path: str) -> bool:
    """A plate, a well or a glob of images (`status` lists its units)."""
    return is_collection(path)


def collection_status(
    input: str | Path, wells: Sequence[str] | None = None, fields: Sequence[str] | None = None
) -> dict[str, Any]:
    """Per image of the collection: the latest run's state and chunk tasks, and totals."""
    rows = []
    for image in collection_images(input, wells, fields):
        runs = list_runs(image.path)
        latest = runs[-1] if runs else {}
        rows.append(
            {
                "unit": image.label,
                "image": image.path,
                "state": latest.get("state", "not started"),
                "run_id": latest.get("run_id"),
                "done": int(latest.get("chunks_done", 0)) + int(latest.get("chunks_skipped", 0)),
                "tasks": int(latest.get("tasks", 0) or 0),
                "runs": len(runs),
                "error": latest.get("error"),
            }
        )
    states: dict[str, int] = {}
    for row in rows:
        states[row["state"]] = states.get(row["state"], 0) + 1
    return {
        "input": str(input),
        "units": rows,
        "states": states,
        "done": sum(r["done"] for r in rows),
        "tasks": sum(r["tasks"] for r in rows),
    }


def collection_outputs(
    pipeline: Pipeline,
    input: Any,
    roi: Any,
    overwrite: bool,
    update: bool,
    resume: bool,
    units: dict[str, Any],
) -> dict[str, str]:
    """What `submit` checks before it starts a collection run: every unit planned (bad
    input refused naming the unit), outputs checked unless resuming (then
    engine/runs/unit_resume.py decides). Returns `<unit> <output name>` -> path."""
    found = plan_collection(
        pipeline, input, roi, units.get("roi_table"), units.get("wells"), units.get("fields"),
        units.get("roi_overlap") or "refuse",
    )  # fmt: skip
    if not resume:
        check_outputs(found.plans, overwrite, update)
    return {
        f"{p.unit.label} {o.name}": str(Path(p.unit.image.path) / o.path)
        for p in found.plans
        for o in p.plan.outputs
    }
