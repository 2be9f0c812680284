"""`reduce_over: plate` and `reduce_over: image`: one reduction value (a threshold's Otsu)
over every image of a collection run, or over every ROI of an image's ROI table.

Two passes, both on the run's one cluster. First, the steps the reduction reads are run
on every unit (each as its own run, as any unit), the step right before the reduction
written as `results/reduce-over-<step>` (no other output: the user's stay untouched).
Then the op's own reduction (map, combine, finish; tasks/) runs over those arrays of all the
units together, chunk by chunk (engine/io/reduce_over.py), and the first-pass arrays are
removed. The units then run with the step fixed to that value (`method: value`), so
each output's provenance records the threshold it used.

How it composes with ROIs: over a plate, the value is over every unit of the run (each
image's ROI, or each ROI of its ROI table); over an image, over that image's units.
Only `threshold` steps (method otsu, li or percentile) are supported.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from engine.core.errors import ConfigError
from engine.core.pipeline import IMAGE, Pipeline, Step
from engine.io.reduce_over import Region, level0_path, reduce_regions, remove_result
from engine.runs.work_unit import Unit

RunOne = Callable[[Pipeline, Unit, bool], Any]  # (pipeline, unit, first of its image)


def shared_values(
    pipeline: Pipeline, units: list[Unit], run_one: RunOne
) -> tuple[Callable[[Unit], Pipeline], dict[str, dict[str, float]]]:
    """(the pipeline each unit runs, the values: step -> group -> value)."""
    steps = [s for s in pipeline.steps if s.reduce_over is not None]
    if not steps:
        return (lambda unit: pipeline), {}
    values: dict[str, dict[str, float]] = {}
    for step in steps:
        _check(step)
        values[step.name] = _values(pipeline, step, units, run_one)

    def pipeline_for(unit: Unit) -> Pipeline:
        data = pipeline.model_dump()
        for row in data["steps"]:
            if row["name"] in values:
                value = values[row["name"]][_group(pipeline.step(row["name"]), unit)]
                row["params"] = {**row["params"], "method": "value", "value": value}
                row["params"].pop("percentile", None)
                row["reduce_over"] = None
        return Pipeline.build(data)

    return pipeline_for, values


def _check(step: Step) -> None:
    if step.op != "threshold" or step.params.get("method") in (None, "value"):
        raise ConfigError(
            f"step '{step.name}': reduce_over is for threshold steps with a computed "
            "method (otsu, li, percentile)"
        )


def _group(step: Step, unit: Unit) -> str:
    return "plate" if step.reduce_over == "plate" else unit.image.path


def _values(pipeline: Pipeline, step: Step, units: list[Unit], run_one: RunOne) -> dict:
    source = step.source
    temp = None
    if source == IMAGE:
        paths = {u.image.path: level0_path(u.image.path, "") for u in units}
    else:
        temp = f"reduce-over-{step.name}"
        upstream = _upstream(pipeline, source, temp)
        done: set[str] = set()
        for unit in units:
            run_one(upstream, unit, unit.image.path not in done)
            done.add(unit.image.path)
        paths = {u.image.path: level0_path(u.image.path, f"results/{temp}") for u in units}
    regions: dict[str, list[Region]] = {}
    for unit in units:
        box = unit.box
        if box is None:
            raise ConfigError(f"{unit.label}: no box for reduce_over")
        if source != IMAGE:
            box = box.drop_axis(unit.channel_axis)  # outputs have no channel axis
        regions.setdefault(_group(step, unit), []).append(
            (unit.image.path, paths[unit.image.path], box)
        )
    try:
        return {key: reduce_regions(step.op, step.params, parts) for key, parts in regions.items()}
    except ValueError as exc:
        raise ConfigError(f"step '{step.name}': reduce_over: {exc}") from None
    finally:
        if temp is not None:
            for path in paths:
                remove_result(path, temp)


def _upstream(pipeline: Pipeline, source: str, temp: str) -> Pipeline:
    """The steps `source` needs (itself included), none writing its own output (the
    first pass never touches the user's outputs) but `source`, written as `temp`."""
    needed: list[str] = []
    todo = [source]
    while todo:
        name = todo.pop()
        if name == IMAGE or name in needed:
            continue
        needed.append(name)
        todo.append(pipeline.step(name).source)
    data = pipeline.model_dump()
    rows = [row for row in data["steps"] if row["name"] in needed]
    for row in rows:
        row["output"] = {"kind": "image", "name": temp} if row["name"] == source else None
    data["steps"] = rows
    return Pipeline.build(data)
