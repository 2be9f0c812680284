"""Every unit of a collection run planned and checked before anything is written, and the
order units run in.

"One plan over all selected images": each unit's plan (engine/plan/compiler.py) is
compiled here, for every unit, before the cluster runs any of them, so a bad config, ROI,
image or output conflict in the 40th field refuses the run before the first field is
written (the message names the unit). The plans also give the collection's totals (chunk
tasks for the overall progress, `plan` on a plate) and, on `--resume`, what each unit
does (engine/runs/unit_resume.py).

`--priority-roi` on a collection: when it names units (a well `B03`, a field `B03/1`, an
image path, or an ROI of the ROI table), those units run first, before every other unit;
otherwise it is an ROI every unit computes first inside its image (as for one image).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from engine.core.errors import ConfigError, EngineError
from engine.core.pipeline import Pipeline
from engine.io.location import Workspace
from engine.io.metadata import ImageMeta, read_image
from engine.io.plates import FieldImage
from engine.io.rois import UserRoi, table_rois, user_roi
from engine.plan.memory import projected_peak
from engine.plan.types import Plan
from engine.runs.outputs import check_output
from engine.runs.planning import make_plan
from engine.runs.work_unit import Unit


@dataclass(frozen=True)
class UnitPlan:
    """One unit's plan, as compiled before the run (run id "plan")."""

    unit: Unit
    meta: ImageMeta
    plan: Plan

    @property
    def tasks(self) -> int:
        return self.plan.task_count

    @property
    def projected_bytes(self) -> int:
        """Projected peak of a one-thread worker running this unit's tasks."""
        return projected_peak(self.plan, 1)[0] if self.plan.stages else 0


def plan_units(
    pipeline: Pipeline,
    images: list[FieldImage],
    roi: UserRoi,
    table: str | None,
    overlap: str = "refuse",
) -> list[Unit]:
    """The units of a run, in order: per image, its ROIs of `table` (or `roi`)."""
    if table is not None and roi is not None:
        raise ConfigError("--roi and --roi-table exclude each other: give one")
    level = min({s.input_ref.level for s in pipeline.steps if s.source == "image"} or {0})
    units = []
    for image in images:
        meta = read_image(image.path)
        c = meta.channel_axis
        if table is None:
            units.append(Unit(image, roi, None, None, user_roi(roi, meta, level, pipeline), c))
            continue
        for name, spec, box, mask in table_rois(meta, table, level, overlap):
            units.append(Unit(image, spec, name, mask, box, c))
    if any(u.mask for u in units):
        _check_masking(pipeline, level)
    return units


def _check_masking(pipeline: Pipeline, level: int) -> None:
    """What a masked run can do: label and image outputs at level 0, no tables (their
    rows would measure the whole box, not the object's mask)."""
    if level != 0:
        raise ConfigError("a masking ROI table needs the steps to read the image at level 0")
    for step in pipeline.steps:
        if step.output is not None and step.output.kind not in ("label", "image"):
            raise ConfigError(
                f"step '{step.name}': a {step.output.kind} output is not written per masked "
                "object; with a masking ROI table, outputs are label and image outputs only"
            )


def compile_units(pipeline: Pipeline, units: list[Unit], overwrite: bool) -> list[UnitPlan]:
    """Every unit's plan, each refusal naming its unit."""
    plans = []
    for unit in units:
        try:
            meta, plan = make_plan(pipeline, unit.image.path, unit.roi, overwrite=overwrite)
        except EngineError as exc:
            raise type(exc)(f"{unit.label}: {exc}") from None
        plans.append(UnitPlan(unit, meta, plan))
    return plans


def check_outputs(
    plans: list[UnitPlan], overwrite: bool, update: bool, only: set[int] | None = None
) -> None:
    """The outputs of each image's first unit may be written as asked (later units of an
    image add to them); `only`: the indices of the units to check (default all)."""
    first: set[str] = set()
    for k, unit_plan in enumerate(plans):
        path = unit_plan.unit.image.path
        if path in first:
            continue
        first.add(path)
        if only is not None and k not in only:
            continue
        for out in unit_plan.plan.outputs:
            try:
                check_output(Workspace.of(unit_plan.meta.location), out, overwrite, update)
            except EngineError as exc:
                raise type(exc)(f"{unit_plan.unit.label}: {exc}") from None


def check_units(
    pipeline: Pipeline, units: list[Unit], overwrite: bool, update: bool
) -> list[UnitPlan]:
    """Refuse before anything is written: every unit plans (its image, ROI and config are
    sound), and the outputs of each image's first unit may be written as asked."""
    plans = compile_units(pipeline, units, overwrite)
    check_outputs(plans, overwrite, update)
    return plans


def selects_units(units: list[Unit], name: Any) -> list[int]:
    """The indices of the units `name` names: a well, a field, an image path, an ROI of
    the ROI table (none: `name` is an ROI inside each image)."""
    if not isinstance(name, str) or not name:
        return []
    wanted = {name, name.rstrip("/"), name.replace("/", "")}  # "B/03" is the well B03
    found = []
    for k, unit in enumerate(units):
        image = unit.image
        names = {image.path, image.path.rstrip("/"), image.label}
        if image.well is not None:
            names |= {image.well, f"{image.well}/{image.field}"}
        if unit.roi_name is not None:
            names.add(unit.roi_name)
        if wanted & names:
            found.append(k)
    return found


def priority_first(units: list[Unit], name: Any, overlap: str) -> tuple[list[Unit], bool]:
    """(the units in the order they run, whether `name` named units). The images holding
    named units go first; inside an image its ROIs keep their order unless ROIs may not
    overlap (`overlap` "refuse"): with "first"/"last" the order decides which ROI wins."""
    chosen = set(selects_units(units, name))
    if not chosen:
        return units, False
    images = list(dict.fromkeys(u.image.path for u in units))
    wanted = {units[k].image.path for k in chosen}
    order = [p for p in images if p in wanted] + [p for p in images if p not in wanted]
    result = []
    for path in order:
        group = [(k, u) for k, u in enumerate(units) if u.image.path == path]
        if overlap == "refuse":
            group.sort(key=lambda item: item[0] not in chosen)  # stable: named ROIs first
        result += [u for _, u in group]
    return result, True
