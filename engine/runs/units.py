"""Runs over several units of work: the images of a plate (a well, a list or glob of
images) and the ROIs of an ROI table, on one cluster started once.

`run` is the public entry point: one image and one ROI go straight to
engine/runs/runner.py; a collection or `roi_table` becomes a list of units (image, ROI),
all planned and checked before anything is written (a bad config, ROI or output
conflict in any image refuses the whole run), then run on one scheduler
(engine/execute/cluster.py `shared_scheduler`), `parallel` images at a time.

Per unit the run is exactly a single-image run on that image and ROI, so outputs land
in each image as a single run writes them, halos are read from the image around each
ROI, and reductions (Otsu, percentiles) are per unit: per image, per ROI. The second
and later ROIs of an image add to its outputs as `--update` does: inside their ROI only,
label ids after the output's largest, table rows merged. Overlapping ROIs are refused
unless `roi_overlap` says which wins ("last": later rows overwrite earlier ones where
they overlap; "first": the reverse). Measurement tables get an obs column `roi` (the
ROI each object came from); a plate run also writes each table at the plate root with
`well` and `field` columns (engine/io/plates.py). A unit that fails does not stop the
others; the error raised at the end names every failed image (and ROI), and their
finished work stays on disk.

`reduce_over: plate` / `reduce_over: image` on a threshold step: one value over every
unit, or over each image's units (engine/runs/reduce_over.py).

One plan, then the runs: every unit's plan is compiled and checked before any unit runs
(engine/runs/unit_plans.py), then each unit is its own run (lock, run record, markers)
on the one cluster, `parallel` images at a time, an image's own ROIs one after the
other; their chunk tasks interleave on the workers (how busy they were is measured:
`UnitsResult.occupancy`, engine/execute/occupancy.py). `--resume` continues every unit
(engine/runs/unit_resume.py); progress is one count over all units.

Masking ROI tables (`type: masking_roi_table`): one unit per object, its bounding box as
the ROI; engine/io/masking.py keeps the unit's result only inside the object's mask and
puts back the outputs' earlier voxels elsewhere in the box (label and image outputs at
level 0; tables refused, as their rows would measure the whole box).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.core.errors import ConfigError, EngineError
from engine.core.pipeline import Pipeline, RoiSpec
from engine.execute.occupancy import Occupancy
from engine.execute.placement import ClusterArg
from engine.io.masking import MaskedWrite
from engine.io.plates import FieldImage, collection_images, is_collection, write_plate_table
from engine.io.roi_tables import read_rois, roi_table_names
from engine.io.rois import UserRoi
from engine.io.tables import read_table, read_table_column, set_row_names, table_path
from engine.plan.versions import version_number
from engine.runs import runner
from engine.runs.outputs import check_flags
from engine.runs.planning import make_plan
from engine.runs.progress import OverallProgress, stoppable
from engine.runs.reduce_over import shared_values
from engine.runs.result import RunResult
from engine.runs.unit_plans import (
    UnitPlan,
    check_outputs,
    check_units,
    compile_units,
    plan_units,
    priority_first,
)
from engine.runs.unit_resume import check_resume_supported, done_result, id_range, resumptions
from engine.runs.work_unit import Unit

__all__ = ["UnitsFailed", "UnitsResult", "check_units", "plan_units", "run"]

ROI_COLUMN = "roi"
# Images run side by side on the one cluster (an image's own ROIs one after the other).
# A unit's stages wait on each other (a 256x256 field: 8 stages, 3 to 5 s, mostly
# waiting), so two images at once keep the workers busier: 8 such fields on 2 workers
# took 29.3 s one at a time, 19.7 s two at a time, 19.1 s four at a time (load ~12).
# Measured again (plates2, engine/execute/occupancy.py) on 8 fields of 2048x2048, the
# standard pipeline with measurement, 2 workers, load 5: one at a time 11.3 s (workers
# busy 33% of the time), two 11.2 s (51%), three 13.3 s (45%); 8 fields of 1024x1024:
# 10.8, 9.2, 9.8, 7.6 s for 1 to 4 (busy 18 to 24%). The driver's own work per image
# (0.5 to 0.8 CPU s: zarr metadata, run records, tables, dask messages) shares the 2
# cores with the workers, so more images at once do not help there. On a larger cluster
# an image does not keep many workers busy, so the default is one image per
# PER_IMAGE_THREADS worker threads, at least PARALLEL.
PARALLEL = 2
PER_IMAGE_THREADS = 2


@dataclass
class UnitsResult:
    """What a run over several units gives back: each unit's result, the failures, and
    the plate-level tables written."""

    results: list[tuple[Unit, RunResult]]
    failed: list[tuple[Unit, str]] = field(default_factory=list)
    plate_tables: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0
    reduced: dict[str, dict[str, float]] = field(default_factory=dict)  # reduce_over values
    occupancy: Occupancy = field(default_factory=Occupancy)  # how busy the workers were
    driver_cpu: float = 0.0  # CPU seconds of this process (every unit's driver thread)

    @property
    def labels(self) -> dict[str, int]:
        """Objects per label output, summed over the units."""
        total: dict[str, int] = {}
        for _, result in self.results:
            for name, count in result.labels.items():
                total[name] = total.get(name, 0) + count
        return total

    @property
    def tasks_done(self) -> int:
        return sum(r.tasks_done for _, r in self.results)

    def to_json(self) -> dict[str, Any]:
        return {
            "units": [
                {
                    "image": u.image.path,
                    "well": u.image.well,
                    "field": u.image.field,
                    "roi": u.roi_name,
                    **r.to_json(),
                }
                for u, r in self.results
            ],
            "failed": [
                {"unit": u.label, "image": u.image.path, "error": e} for u, e in self.failed
            ],
            "plate_tables": self.plate_tables,
            "reduced": self.reduced,
            "objects": self.labels,
            "tasks_done": self.tasks_done,
            "seconds": round(self.seconds, 3),
            "workers": self.occupancy.to_json(),
            "driver_cpu_seconds": round(self.driver_cpu, 3),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> UnitsResult:
        """The result a batch job wrote (result.json), as `to_json` made it: units by
        image, well and field; each unit's run result."""
        results = [
            (Unit(FieldImage(row["image"], row.get("well"), row.get("field"))),
             RunResult.from_json(row))
            for row in data.get("units", [])
        ]  # fmt: skip
        failed = [
            (Unit(FieldImage(row["image"])), row.get("error", "")) for row in data.get("failed", [])
        ]
        return cls(
            results, failed, dict(data.get("plate_tables", {})), float(data.get("seconds", 0)),
            dict(data.get("reduced", {})),
        )  # fmt: skip


class UnitsFailed(EngineError):
    """Some units failed; `result` holds the others' (finished, on disk) results."""

    def __init__(self, message: str, result: UnitsResult) -> None:
        super().__init__(message)
        self.result = result


def run(
    pipeline: Pipeline | str | Path,
    input: str | Path | Sequence[str] | None = None,
    roi: UserRoi = None,
    workers: int | None = None,
    overwrite: bool = False,
    update: bool = False,
    scheduler: str | None = None,
    progress: Callable[[str, int], Callable[[int], None]] | None = None,
    cluster: ClusterArg = None,
    resume: bool = False,
    retries: int = runner.RETRIES,
    priority_roi: str | RoiSpec | dict | None = None,
    announce: Callable[[str], None] | None = None,
    roi_table: str | None = None,
    wells: Sequence[str] | None = None,
    fields: Sequence[str] | None = None,
    roi_overlap: str = "refuse",
    parallel: int | None = None,
    warm: bool | None = None,
    idle_timeout: float | None = None,
    output: str | Path | None = None,
    storage_options: dict[str, Any] | None = None,
) -> RunResult | UnitsResult:
    """Run a pipeline on an image, or on every selected image of a plate, a well or a
    list/glob of images (`wells=["B03"]`, `fields=["0"]`), or once per ROI of the ROI
    table `roi_table` of each image (`roi=` naming an ROI table, not an ROI, does the
    same); see the module docstring. One image and no ROI table: exactly
    engine/runs/runner.py `run`, returning its RunResult.

    On a collection: `resume=True` continues every unit (engine/runs/unit_resume.py);
    `progress` gets one overall count (engine/runs/progress.py `OverallProgress`);
    `priority_roi` naming units (a well, a field, an image, an ROI of the table) runs
    them first, else each unit computes that ROI first (engine/runs/unit_plans.py).
    `pipeline` may be the path of a YAML config, as the command takes it."""
    if not isinstance(pipeline, Pipeline):
        pipeline = Pipeline.from_yaml(pipeline)
    source, table, roi = resolve_units(pipeline, input, roi, roi_table)
    if not is_collection(source) and table is None and not wells and not fields:
        return runner.run(
            pipeline, source, roi, workers, overwrite, update, scheduler, progress,
            cluster, resume, retries, priority_roi, announce, warm, idle_timeout,
            output, storage_options,
        )  # fmt: skip
    if output is not None or pipeline.output_store is not None:
        raise ConfigError(
            "an output store holds one image's outputs: --output (output_store:) is for a "
            "run on one image"
        )
    check_flags(overwrite, update, resume)
    if source is None:
        raise ConfigError("no input image: set 'input' in the config or pass --input")
    images = collection_images(source, wells, fields)
    units = plan_units(pipeline, images, roi, table, roi_overlap)
    units, named = priority_first(units, priority_roi, roi_overlap)
    unit_priority = None if named else priority_roi
    if resume:
        check_resume_supported(units)
    # every unit planned (and, unless resuming, its outputs checked) before any is written
    plans = compile_units(pipeline, units, overwrite)
    if not resume:
        check_outputs(plans, overwrite, update)
    decisions = None
    if not any(s.reduce_over for s in pipeline.steps):  # before any cluster starts
        decisions, overwrite, update = resumptions(
            plans, lambda unit: pipeline, resume, overwrite, update, source
        )
    if warm is None and pipeline.user_code():
        warm = False  # as for one image (runner.py): warm workers keep the first import
    started, cpu = time.perf_counter(), time.process_time()
    result = UnitsResult([])
    seen_rows: dict[tuple[str, str], dict[str, str]] = {}  # (image, table) -> row -> roi
    field_rows: dict[tuple[str, str], tuple] = {}  # (image, table read) -> its rows
    tables = [s.output.name for s in pipeline.steps if s.output and s.output.kind == "table"]
    from engine.execute.cluster import shared_scheduler  # dask: imported once a run needs it

    with shared_scheduler(
        workers, scheduler, cluster, pipeline.cluster, warm, idle_timeout, result.occupancy
    ) as address:
        if announce is not None:
            announce(f"{len(units)} units ({len(images)} images) on the scheduler {address}")

        def first_pass(pipe: Pipeline, unit: Unit, first: bool) -> RunResult:
            """reduce_over's first pass: its own scratch output, made again on --resume."""
            return runner.run(
                pipe, unit.image.path, unit.roi,
                overwrite=(overwrite or resume) and first, update=update or not first,
                scheduler=address, retries=retries,
            )  # fmt: skip

        pipeline_for, result.reduced = shared_values(pipeline, units, first_pass)
        if result.reduced:  # the units run with the reduced values: plan those
            plans = [
                UnitPlan(p.unit, p.meta, make_plan(pipeline_for(p.unit), p.unit.image.path,
                                                   p.unit.roi, overwrite=overwrite)[1])
                for p in plans
            ]  # fmt: skip
        if decisions is None:  # reduce_over: the units' configs are known only now
            decisions, overwrite, update = resumptions(
                plans, pipeline_for, resume, overwrite, update, source
            )
        stopping = threading.Event()
        overall = None
        if progress is not None:
            todo = sum(p.tasks for p, d in zip(plans, decisions, strict=True) if d.action != "done")
            label = f"{len(images)} images" if table is None else f"{len(units)} ROIs"
            overall = OverallProgress(progress, label, todo, len(units))

        def run_one(k: int, first: bool) -> RunResult:
            unit, decision = units[k], decisions[k]
            if decision.action == "done":
                return done_result(plans[k], decision)
            flags = {"overwrite": overwrite and first, "update": update or not first}
            if decision.action == "resume":
                flags = {"resume": True}
            return runner.run(
                pipeline_for(unit), unit.image.path, unit.roi,
                scheduler=address, retries=retries, priority_roi=unit_priority,
                progress=stoppable(overall.unit() if overall else None, stopping), **flags,
            )  # fmt: skip

        def run_image(group: list[int]) -> list[tuple[Unit, RunResult | str]]:
            """One image's units, in order (later ROIs add to the earlier's outputs)."""
            done: list[tuple[Unit, RunResult | str]] = []
            for position, k in enumerate(group):
                unit = units[k]
                masked = _masked_write(pipeline, unit)
                try:
                    if masked is not None:
                        masked.before()
                    one = run_one(k, position == 0)
                    if masked is not None:
                        masked.after()
                except EngineError as exc:
                    done.append((unit, str(exc)))
                    continue
                except Exception as exc:  # noqa: BLE001 (one failure must not end the rest)
                    done.append((unit, f"{type(exc).__name__}: {exc}"))
                    continue
                finally:
                    if overall is not None:
                        overall.unit_done()
                done.append((unit, one))
                if unit.roi_name is None:
                    if unit.image.plate is not None:  # read now, beside the other units' work
                        _read_field_tables(unit, one, tables, field_rows)
                    continue
                if decisions[k].action == "done":  # found done on --resume
                    ids = id_range(k, units, decisions)
                    _note_rows(unit, _written(tables, one), seen_rows, ids)
                else:
                    _note_rows(unit, _written(tables, one), seen_rows)
            return done

        groups: dict[str, list[int]] = {}
        for k, unit in enumerate(units):
            groups.setdefault(unit.image.path, []).append(k)
        if parallel is None:  # enough images side by side to keep every worker busy
            parallel = max(PARALLEL, result.occupancy.threads // PER_IMAGE_THREADS)
        pool = ThreadPoolExecutor(max(1, min(parallel, len(groups))))
        try:
            for future in [pool.submit(run_image, group) for group in groups.values()]:
                for unit, outcome in future.result():
                    if isinstance(outcome, str):
                        result.failed.append((unit, outcome))
                    else:
                        result.results.append((unit, outcome))
        except BaseException as exc:
            # Ctrl-C, SIGTERM (in this thread) or a unit interrupted: the running units
            # stop at their next finished batch (recorded `killed`, --resume continues
            # them), the waiting ones do not start
            stopping.set()
            pool.shutdown(wait=True, cancel_futures=True)
            if isinstance(exc, KeyboardInterrupt):
                exc.run_id = f"over {len(units)} units"  # type: ignore[attr-defined]
            raise
        pool.shutdown()
    for (image, name), rows in seen_rows.items():
        set_row_names(image, name, ROI_COLUMN, rows)
    result.plate_tables = _plate_tables(result, tables, field_rows)
    result.seconds = time.perf_counter() - started
    result.driver_cpu = time.process_time() - cpu
    if result.failed:
        lines = "; ".join(f"{u.label} ({u.image.path}): {e}" for u, e in result.failed)
        raise UnitsFailed(
            f"{len(result.failed)} of {len(units)} units failed (the others' outputs are "
            f"written): {lines}",
            result,
        )
    return result


def is_units_run(
    pipeline: Pipeline,
    input: Any,
    roi: UserRoi = None,
    roi_table: str | None = None,
    wells: Sequence[str] | None = None,
    fields: Sequence[str] | None = None,
) -> bool:
    """Whether `run` with these arguments is a collection run (several images, or the
    ROIs of an ROI table), not one image's."""
    source, table, _ = resolve_units(pipeline, input, roi, roi_table)
    return is_collection(source) or table is not None or bool(wells) or bool(fields)


def resolve_units(
    pipeline: Pipeline, input: Any, roi: UserRoi, roi_table: str | None
) -> tuple[Any, str | None, UserRoi]:
    """(the input, the ROI table run over, the ROI) of a run: the arguments, else the
    config's; an `roi` naming an ROI table of the (first) image, not an ROI
    (`roi="FOV_ROI_table"`), is that table, every ROI of it."""
    source = input if input is not None else pipeline.input
    table = roi_table if roi_table is not None else pipeline.roi_table
    if table is None and names_a_table(pipeline, roi, source):
        return source, str(roi), None
    return source, table, roi


def names_a_table(pipeline: Pipeline, roi: UserRoi, source: Any) -> bool:
    """An ROI given by a name that is no config ROI but an ROI table of the (first) image."""
    if not isinstance(roi, str) or ":" in roi or roi in pipeline.rois or source is None:
        return False
    try:
        first = collection_images(source)[0].path
    except EngineError:
        return False
    return roi in roi_table_names(first) and roi not in read_rois(first)


def _masked_write(pipeline: Pipeline, unit: Unit) -> MaskedWrite | None:
    if unit.mask is None or unit.box is None:
        return None
    outputs = [
        f"{'labels' if s.output.kind == 'label' else 'results'}/{s.output.name}"
        for s in pipeline.steps
        if s.output is not None
    ]
    return MaskedWrite(unit.image.path, unit.mask[0], unit.mask[1], unit.box, outputs)


def _note_rows(
    unit: Unit,
    tables: list[str],
    seen: dict[tuple[str, str], dict[str, str]],
    ids: tuple[int, float] | None = None,
) -> None:
    """Rows a unit added to the image's tables belong to its ROI: those not seen before
    (units run in order), or with `ids` (low, high) the labels low < id <= high."""
    for name in tables:
        path = table_path(unit.image.path, name)
        if not path.exists():
            continue
        rows = seen.setdefault((unit.image.path, name), {})
        labels, _, _ = read_table(path)
        for label in labels:
            if ids is None or ids[0] < int(label) <= ids[1]:
                rows.setdefault(str(int(label)), str(unit.roi_name))


def _written(tables: list[str], result: RunResult) -> list[str]:
    """The names a run wrote (or reused) the table outputs `tables` under: with
    `versions: keep`, `stats.v2` for the step's `stats` (engine/plan/versions.py)."""
    return [
        name for base in tables for name in result.outputs if version_number(base, name)
    ] or list(tables)


def _read_field_tables(
    unit: Unit, one: RunResult, tables: list[str], into: dict[tuple[str, str], tuple]
) -> None:
    """A plate field's tables, read as soon as its run ends (in its thread, while other
    fields compute) rather than all at the end with the workers idle: one anndata read
    is ~50 ms, 2.4 s for 48 fields."""
    for name in _written(tables, one):
        if table_path(unit.image.path, name).exists():
            into[(unit.image.path, name)] = read_table_column(unit.image.path, name, ROI_COLUMN)


def _plate_tables(
    result: UnitsResult, tables: list[str], read: dict[tuple[str, str], tuple] | None = None
) -> dict[str, str]:
    """Each table of a plate's fields, gathered at the plate root: from each field the
    version its run wrote (or reused); the plate table has that version's name when the
    fields agree (`stats.v2`), else the step's output name. `read`: tables already read
    (not those of ROI-table units: their `roi` column is written at the end)."""
    read = read or {}
    plates = {u.image.plate for u, _ in result.results}
    if not tables or len(plates) != 1 or None in plates:
        return {}
    plate = str(plates.pop())
    written = {}
    for base in tables:
        sources: dict[FieldImage, str] = {}
        for unit, one in result.results:
            names = [n for n in _written([base], one) if version_number(base, n)]
            sources.setdefault(unit.image, names[0] if names else base)
        rows = []
        for image, name in sources.items():
            if (image.path, name) in read:
                rows.append((image, *read[(image.path, name)]))
            elif table_path(image.path, name).exists():
                rows.append((image, *read_table_column(image.path, name, ROI_COLUMN)))
        if rows:
            names = set(sources.values())
            name = names.pop() if len(names) == 1 else base
            written[name] = write_plate_table(plate, name, rows)
    return written
