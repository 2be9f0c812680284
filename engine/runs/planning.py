"""From what the user gave (a pipeline, an input, an ROI in any of its forms) to the
plan a run follows: the image's metadata read once, the ROI resolved once
(engine/io/rois.py), the zarr's stored outputs read once (engine/runs/existing.py).
Nothing is written here.
"""

from __future__ import annotations

from pathlib import Path

from engine.core.errors import ConfigError, in_python_terms
from engine.core.geometry import Roi
from engine.core.pipeline import Pipeline
from engine.core.version import __version__
from engine.io.metadata import ImageMeta, read_image
from engine.io.rois import UserRoi, check_config_rois, user_roi
from engine.plan.compiler import compile_plan
from engine.plan.types import Plan
from engine.runs.existing import read_existing


def resolve_input(pipeline: Pipeline, input: str | Path | None) -> str:
    path = input if input is not None else pipeline.input
    if path is None:
        raise ConfigError("no input image: set 'input' in the config or pass --input")
    return str(Path(path))


@in_python_terms
def make_plan(
    pipeline: Pipeline,
    input: str | Path | None = None,
    roi: UserRoi = None,
    run_id: str = "plan",
    overwrite: bool = False,
) -> tuple[ImageMeta, Plan]:
    """The plan a run would follow: outputs stored for the same config and ROI are reused
    (not with `overwrite`), versions are named; see engine/plan/versions.py."""
    pipeline.check_complete()
    check_config_rois(pipeline.rois)
    meta = read_image(resolve_input(pipeline, input))
    level = {s.input_ref.level for s in pipeline.steps if s.source == "image"} or {0}
    box = user_roi(roi, meta, min(level), pipeline)
    existing = read_existing(meta, pipeline)
    return meta, compile_plan(pipeline, meta, box, run_id, __version__, existing, overwrite)


def priority_box(pipeline: Pipeline, roi: UserRoi, meta: ImageMeta, plan: Plan) -> Roi | None:
    """The box (plan work space) a run computes first: `roi`, else a config ROI marked
    `preview: true`; clipped to the run's ROI."""
    if roi is None:
        roi = next((name for name, spec in pipeline.rois.items() if spec.preview), None)
        if roi is None:
            return None
    box = user_roi(roi, meta, plan.level, pipeline)
    return box.drop_axis(meta.channel_axis).intersect(plan.roi)
