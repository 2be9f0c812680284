"""The compiler: (pipeline, image metadata, ROI) -> a Plan of chunk tasks.

A plan is plain, frozen data. It says, per stage, which chunk tasks run, the
box each reads (its chunk plus the halo its fused chain needs, clipped to the
data's extent) and the box it writes, and which stages it waits for. It is
built from metadata alone, in time proportional to the chunks the ROI touches.

Work space: the image's axes without the channel axis. Every op sees one
spatial block (one time point, one channel); time is iterated, never mixed.

Fusion: a chain of blockwise steps runs inside one task per output chunk,
reading from the nearest materialised source (the image, or the output of a
global step). Reductions (e.g. Otsu) become their own stages whose value the
chain receives. Labels (global) take four stages: local labels, face pairs,
one merge, relabel. Instance segmentation (global) takes the same four, with a
segmenter run on each chunk grown by an overlap instead of local labels, and
pairs of objects whose segmentations of the band around a border agree instead
of face pairs. A table (`op: measure`, `op: evaluate`) is one stage after
everything else: per chunk of the ROI, partials of the label step's materialised output
(sums per label with the intensity chain read over the same box; or a contingency table
against the reference label image), combined on the driver. A step that trains a model
(`op.artifact == "model"`) is one "train" stage: per chunk, its chain (ending in the
op's per-block features) and the annotation labels over the same box; the driver
combines the samples and one fit makes the artifact. Predict steps run as the
`op: model` step their artifact makes (engine/io/models.py); stages whose chain holds a
model carry its worker resources, and a model step's output is read back by the chains
after it rather than run again.

Reuse: given a snapshot of what the zarr holds (engine/plan/versions.py), an output whose
config and ROI are unchanged is not planned; the chains that read it start from it, as
from any materialised source, and steps only it needed are not planned either (a step
without an output is planned when the first chain that reads it is). A model artifact
is an output here too: training it again with the same config on the same ROI is not
planned, and the outputs of a predict step name the model's sha256 in their provenance.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from engine.core.errors import ConfigError
from engine.core.geometry import Roi
from engine.core.grid import ChunkGrid
from engine.core.layout import DIFF_SCRATCH, run_folder
from engine.core.pipeline import IMAGE, Pipeline
from engine.io.metadata import ImageMeta
from engine.io.models import model_steps
from engine.plan.chains import ChainRules
from engine.plan.outputs import OutputRules
from engine.plan.stitching import StitchRules
from engine.plan.table_rules import TABLE_OPS, TableRules
from engine.plan.types import OutputPlan, Plan, Source, Stage
from engine.plan.versions import Decision, Existing
from tasks import OPS, Context


def compile_plan(
    pipeline: Pipeline,
    meta: ImageMeta,
    roi: Roi,
    run_id: str = "plan",
    engine_version: str = "",
    existing: Existing | None = None,
    overwrite: bool = False,
) -> Plan:
    """Compile a validated pipeline against an image and an index-space ROI (image axes).

    `existing` is what the zarr holds (label images for references, stored outputs for
    reuse and versions); without it every output is planned under its own name.
    `overwrite` plans outputs even where a stored one could be reused.
    """
    compiler = Compiler(pipeline, meta, roi, run_id, engine_version, existing)
    compiler.existing = existing or Existing()
    compiler.overwrite = overwrite
    return compiler.compile()


class Compiler(ChainRules, StitchRules, TableRules, OutputRules):
    """One compile: the state the rules (mixins, one module per concern) share."""

    def __init__(
        self,
        pipeline: Pipeline,
        meta: ImageMeta,
        roi: Roi,
        run_id: str,
        engine_version: str,
        existing: Existing | None = None,
    ) -> None:
        self.pipeline = pipeline
        self.meta = meta
        self.level = _processing_level(pipeline)
        self.roi_full = roi
        self.c_axis = meta.channel_axis
        self.axes = meta.drop_channel(meta.axes)
        self.axis_names = tuple(a.name for a in self.axes)
        lv = meta.level(self.level)
        self.shape = meta.drop_channel(lv.shape)
        self.chunks = meta.drop_channel(lv.chunks)
        work = roi.drop_axis(self.c_axis)  # the work space has no channel axis
        self.roi = Roi(work.start, work.stop, self.level)
        self.bounds = Roi.from_shape(self.shape, self.level)
        self.spatial = tuple(
            i for i, a in enumerate(self.axes) if meta.axes.index(a) in meta.spatial_axes
        )
        self.context = Context(spacing=meta.spacing_um(self.level))
        self.run_id = run_id
        self.scratch = run_folder(run_id)
        self.engine_version = engine_version
        self.stages: dict[str, Stage] = {}
        # predict steps as `op: model`, with models from the output store when separate
        models = existing.models if existing is not None and existing.models else meta.path
        self.expanded = model_steps(pipeline, models)
        # step name -> (array holding its result, stage that writes it (None: an output
        # stored before this run), usable only by chains that need no halo beyond it: true
        # for ROI-only arrays of exact values)
        self.materialised: dict[str, tuple[Source, str | None, bool]] = {}
        self.outputs: list[OutputPlan] = []
        self.reused: list[OutputPlan] = []
        self.decisions: dict[str, tuple[Decision, dict[str, Any], str]] = {}
        self.existing = Existing()
        self.overwrite = False

    def compile(self) -> Plan:
        tables = []
        for step in self.pipeline.ordered_steps():
            if step.op in TABLE_OPS:
                tables.append(step)  # after every other step: whatever it reads is then planned
                continue
            if OPS[step.op].artifact == "model":
                self._train(step)
                continue
            if step.output is not None and step.output.kind == "table":
                ops = " and ".join(f"'{op}'" for op in TABLE_OPS)
                raise ConfigError(
                    f"step '{step.name}': output kind 'table' is made by ops {ops} only"
                )
            if step.output is None or self._reused(step):
                continue  # a step without an output is planned when a chain reads it
            if self._kind(step) == "global":
                self._global(step)
            else:
                self._blockwise_output(step)
        rules = {"measure": self._measure, "evaluate": self._evaluate}
        for step in tables:
            rules[step.op](step)
        return Plan(
            image=self.meta.path,
            level=self.level,
            roi=self.roi,
            axes=self.axis_names,
            spatial=self.spatial,
            chunks=self.chunks,
            context=self.context,
            stages=tuple(_placed(s) for s in self.stages.values()),
            outputs=tuple(self.outputs),
            scratch=self.scratch,
            reused=tuple(self.reused),
        )


def _placed(stage: Stage) -> Stage:
    """A stage whose chain runs models: the worker resources they need (the largest
    amount of each) and their batch size (the smallest asked for)."""
    models = [
        OPS["model"].params.model_validate(link.params)
        for link in stage.chain
        if link.op == "model"
    ]
    resources: dict[str, float] = {}
    for params in models:
        for name, amount in params.resources.items():
            resources[name] = max(resources.get(name, 0.0), float(amount))
    sizes = [params.batch_size for params in models if params.batch_size is not None]
    if not resources and not sizes:
        return stage
    return dataclasses.replace(
        stage, resources=tuple(sorted(resources.items())), batch_size=min(sizes, default=None)
    )


def comparison_plan(
    image: str, labels: tuple[str, ImageMeta], reference: tuple[str, ImageMeta], roi: Roi
) -> Plan:
    """One "evaluate" stage over an ROI at level 0 (`diff`): the label image at path
    `labels[0]` (relative to `image`) against the one at `reference[0]`, both of the same
    shape, on the chunk grid of the first."""
    meta, level = labels[1], labels[1].levels[0]
    ref_level = reference[1].levels[0]
    bounds = Roi.from_shape(level.shape, 0)
    tasks = ChunkGrid(tuple(level.chunks), bounds, roi, bounds)
    stage = Stage(
        "diff/evaluate",
        "diff",
        "evaluate",
        Source(f"{reference[0]}/{ref_level.path}", ref_level.dtype, bounds),
        (),
        tasks,
        labels=Source(f"{labels[0]}/{level.path}", level.dtype, bounds),
    )
    return Plan(
        image=image,
        level=0,
        roi=roi,
        axes=meta.axis_names,
        spatial=meta.spatial_axes,
        chunks=level.chunks,
        context=Context(spacing=meta.spacing_um(0)),
        stages=(stage,),
        outputs=(),
        scratch=DIFF_SCRATCH,
    )


def _processing_level(pipeline: Pipeline) -> int:
    levels = {s.input_ref.level for s in pipeline.steps if s.source == IMAGE}
    if len(levels) > 1:
        raise ConfigError(
            f"steps read the image at different levels {sorted(levels)}; use one level"
        )
    return levels.pop() if levels else 0
