"""From what the user gave (a pipeline, an input, an ROI in any of its forms) to the
plan a run follows: the image's metadata read once, the ROI resolved once
(engine/io/rois.py), the zarr's stored outputs read once (engine/runs/existing.py).
Nothing is written here.
"""

from __future__ import annotations

from pathlib import Path

from engine.core.errors import ConfigError
from engine.core.geometry import Roi
from engine.core.pipeline import Pipeline, RoiSpec
from engine.core.version import __version__
from engine.io.metadata import ImageMeta, read_image
from engine.io.rois import named_roi, resolve_roi
from engine.plan.compiler import compile_plan
from engine.plan.types import Plan
from engine.runs.existing import read_existing


def resolve_input(pipeline: Pipeline, input: str | Path | None) -> str:
    path = input if input is not None else pipeline.input
    if path is None:
        raise ConfigError("no input image: set 'input' in the config or pass --input")
    return str(Path(path))


def roi_spec(
    pipeline: Pipeline, roi: str | RoiSpec | dict | None, image: str | None = None
) -> tuple[str, RoiSpec | None]:
    """A name is looked up in the config's `rois:`, then in the image's ROI tables."""
    if roi is None:
        return "whole image", None
    if isinstance(roi, str):
        return roi, named_roi(pipeline, roi, image)
    if isinstance(roi, dict):
        return "roi", RoiSpec.model_validate(roi)
    return "roi", roi


def make_plan(
    pipeline: Pipeline,
    input: str | Path | None = None,
    roi: str | RoiSpec | dict | None = None,
    run_id: str = "plan",
    overwrite: bool = False,
) -> tuple[ImageMeta, Plan]:
    """The plan a run would follow: outputs stored for the same config and ROI are reused
    (not with `overwrite`), versions are named; see engine/plan/versions.py."""
    pipeline.check_complete()
    meta = read_image(resolve_input(pipeline, input))
    name, spec = roi_spec(pipeline, roi, meta.path)
    level = {s.input_ref.level for s in pipeline.steps if s.source == "image"} or {0}
    box = resolve_roi(spec, meta, min(level), name)
    existing = read_existing(meta, pipeline)
    return meta, compile_plan(pipeline, meta, box, run_id, __version__, existing, overwrite)


def priority_box(
    pipeline: Pipeline, roi: str | RoiSpec | dict | None, meta: ImageMeta, plan: Plan
) -> Roi | None:
    """The box (plan work space) a run computes first: `roi`, else a config ROI marked
    `preview: true`; clipped to the run's ROI."""
    if roi is None:
        roi = next((name for name, spec in pipeline.rois.items() if spec.preview), None)
        if roi is None:
            return None
    name, spec = roi_spec(pipeline, roi, meta.path)
    box = resolve_roi(spec, meta, plan.level, name)
    keep = [i for i in range(len(meta.axes)) if i != meta.channel_axis]
    work = Roi(tuple(box.start[i] for i in keep), tuple(box.stop[i] for i in keep), plan.level)
    return work.intersect(plan.roi)
