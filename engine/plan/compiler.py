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
import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from engine.core.errors import ConfigError, NgffError
from engine.core.geometry import Roi
from engine.core.grid import ChunkGrid
from engine.core.pipeline import IMAGE, Pipeline, Step
from engine.io.metadata import Axis, ImageMeta, read_image
from engine.io.models import model_path, model_steps, model_version
from engine.io.ngff_write import LevelSpec, OutputKind, output_path
from engine.plan.versions import Decision, Existing, RoiJson, decide
from tasks import OPS, Context

StageKind = Literal[
    "reduce",
    "blockwise",
    "label",
    "faces",
    "segment",
    "match",
    "merge",
    "relabel",
    "pyramid",
    "measure",
    "train",
    "evaluate",
]
ENGINE_GROUP = "_engine"
TABLE_OPS = ("measure", "evaluate")  # ops whose output is a table: one stage of that kind


@dataclass(frozen=True)
class Source:
    """Where a chain starts: an image level (one channel) or an array the run wrote."""

    path: str
    dtype: str
    bounds: Roi
    channel_axis: int | None = None
    channel: int | None = None
    cache_key: str | None = None  # set for the input image: reads may share decoded chunks


@dataclass(frozen=True)
class Link:
    """One step of a fused chain."""

    step: str
    op: str
    params: dict[str, Any]
    halo: tuple[int, ...]
    dtype: str
    value_from: str | None = None


@dataclass(frozen=True)
class OutputPlan:
    step: str
    kind: OutputKind | Literal["table", "model"]
    name: str
    dtype: str | None
    axes: tuple[Axis, ...]
    levels: tuple[LevelSpec, ...]
    provenance: dict[str, Any]
    config_hash: str
    version: Mapping[str, Any] | None = None  # with `versions: keep`: number, previous, change
    op: str = ""

    @property
    def path(self) -> str:
        return output_path(self.kind, self.name)


@dataclass(frozen=True)
class Stage:
    name: str
    step: str
    kind: StageKind
    source: Source | None
    chain: tuple[Link, ...]
    tasks: ChunkGrid
    after: tuple[str, ...] = ()
    target: str | None = None
    target_dtype: str | None = None
    pass_no: int = 0
    level: int = 0
    connectivity: int = 1
    labels: Source | None = None  # measure, evaluate: the label image, read per chunk
    grid: tuple[int, ...] = ()  # chunk shape of the tasks' grid, when not the plan's
    shards: tuple[int, ...] = ()  # shard shape of the target: its tasks go per shard
    region: Roi | None = None  # segment: the ROI, where a chunk's overlap stops as objects do
    resources: tuple[tuple[str, float], ...] = ()  # dask worker resources each task needs
    batch_size: int | None = None  # chunk tasks per worker call; None: the executor's choice


@dataclass(frozen=True)
class Plan:
    image: str
    level: int
    roi: Roi
    axes: tuple[str, ...]
    spatial: tuple[int, ...]
    chunks: tuple[int, ...]
    context: Context
    stages: tuple[Stage, ...]
    outputs: tuple[OutputPlan, ...]
    scratch: str
    reused: tuple[OutputPlan, ...] = ()  # outputs read as they are, not written
    extra: dict[str, Any] = field(default_factory=dict)

    def stage(self, name: str) -> Stage:
        for stage in self.stages:
            if stage.name == name:
                return stage
        raise KeyError(name)

    @property
    def task_count(self) -> int:
        return sum(len(s.tasks) for s in self.stages)


def chain_boxes(write: Roi, chain: Sequence[Link], bounds: Roi) -> list[Roi]:
    """Boxes each link's input must cover, first link first; the last entry is `write`.

    Going backwards from the box written, each link widens the box by its halo,
    clipped to the data's extent, where boundary modes then apply as on the whole.
    """
    boxes = [write]
    for link in reversed(chain):
        boxes.append(boxes[-1].grow(link.halo).intersect(bounds))
    return boxes[::-1]


def face_array_path(local: str, axis: int) -> str:
    """Where a label stage keeps the boundary planes of its chunks along one axis."""
    return f"{local}-faces-{axis}"


def face_planes(stage: Stage, axis: int) -> int:
    """Planes per face along `axis` in the face arrays of a label, segment or match stage.

    Label keeps the one boundary plane on each side of a chunk; segment keeps the
    band of twice the overlap around each border, which both chunks meeting there
    segmented (the overlap is the halo of its op's link, the last of its chain).
    """
    return 2 * stage.chain[-1].halo[axis] if stage.kind in ("segment", "match") else 1


def face_array_layout(
    shape: Sequence[int], chunks: Sequence[int], axis: int, planes: int = 1
) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Shape and chunks of a face array: two faces (low, high) of `planes` planes per
    chunk along `axis`.

    With one face per zarr chunk, reading the two faces that meet at a chunk border
    decodes only those faces, never the chunks they came from.
    """
    n = -(-shape[axis] // chunks[axis])
    face_shape = tuple(2 * n * planes if i == axis else s for i, s in enumerate(shape))
    face_chunks = tuple(planes if i == axis else c for i, c in enumerate(chunks))
    return face_shape, face_chunks


def face_box(
    box: Roi, index: Sequence[int], axis: int, first: int, faces: int = 1, planes: int = 1
) -> Roi:
    """`box` in face-array coordinates: `faces` faces of `planes` planes each, from face
    `first` (0 low, 1 high) of chunk `index` along `axis`."""
    start, stop = list(box.start), list(box.stop)
    start[axis] = (2 * index[axis] + first) * planes
    stop[axis] = start[axis] + faces * planes
    return Roi(tuple(start), tuple(stop), box.level)


def config_hash(data: Any) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:16]


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
    compiler = _Compiler(pipeline, meta, roi, run_id, engine_version)
    compiler.existing = existing or Existing()
    compiler.overwrite = overwrite
    return compiler.compile()


class _Compiler:
    def __init__(
        self, pipeline: Pipeline, meta: ImageMeta, roi: Roi, run_id: str, engine_version: str
    ) -> None:
        self.pipeline = pipeline
        self.meta = meta
        self.level = _processing_level(pipeline)
        self.roi_full = roi
        self.c_axis = meta.channel_axis
        keep = [i for i in range(len(meta.axes)) if i != self.c_axis]
        self.axes = tuple(meta.axes[i] for i in keep)
        self.axis_names = tuple(a.name for a in self.axes)
        lv = meta.level(self.level)
        self.shape = tuple(lv.shape[i] for i in keep)
        self.chunks = tuple(lv.chunks[i] for i in keep)
        self.roi = Roi(
            tuple(roi.start[i] for i in keep), tuple(roi.stop[i] for i in keep), self.level
        )
        self.bounds = Roi.from_shape(self.shape, self.level)
        self.spatial = tuple(
            i for i, a in enumerate(self.axes) if meta.axes.index(a) in meta.spatial_axes
        )
        self.context = Context(spacing=meta.spacing_um(self.level))
        self.run_id = run_id
        self.scratch = f"{ENGINE_GROUP}/runs/{run_id}"
        self.engine_version = engine_version
        self.stages: dict[str, Stage] = {}
        self.expanded = model_steps(pipeline, meta.path)  # predict steps as `op: model`
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
        for step in tables:
            getattr(self, f"_{step.op}")(step)
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

    def _kind(self, step: Step) -> str:
        return OPS[step.op].kind(step.typed_params())

    def _roi_json(self) -> RoiJson:
        return {
            "start": [int(v) for v in self.roi.start],
            "stop": [int(v) for v in self.roi.stop],
            "level": self.level,
        }

    def _halo(self, step: Step) -> tuple[int, ...]:
        try:
            spatial_halo = OPS[step.op].halo(step.typed_params(), self.context)
        except ValueError as exc:
            raise ConfigError(f"step '{step.name}': {exc}") from None
        halo = [0] * len(self.axes)
        for axis, h in zip(self.spatial, spatial_halo, strict=True):
            halo[axis] = int(h)
        return tuple(halo)

    def _chain(self, last: Step, include_last: bool) -> tuple[Source, tuple[Link, ...], list[str]]:
        """Walk upstream from `last` to the nearest materialised source.

        Returns the source, the links in execution order, and the stages the chain
        must wait for (reductions it uses, global steps it reads).
        """
        steps: list[Step] = [self._resolved(last)] if include_last else []
        halo = sum(sum(self._halo(s)) for s in steps)
        current, reader = last.source, last.name
        while current != IMAGE and not self._usable(current, halo):
            step = self._resolved(self.pipeline.step(current))
            if step.op in TABLE_OPS:
                raise ConfigError(f"step '{reader}': input '{current}' is a table, not an image")
            kind = self._kind(step)
            if current not in self.materialised and kind == "global":
                self._global(step)  # planned when first read; its result is then usable
                continue
            if kind == "reduction":
                self._reduction(step)  # first: it may store its input for the walk to stop at
            steps.append(step)
            halo += sum(self._halo(step))
            current, reader = step.source, step.name
        steps.reverse()
        if current == IMAGE:
            source = self._image_source(steps[0] if steps else last)
            after: list[str] = []
        else:
            source, done_stage, _ = self.materialised[current]
            after = [done_stage] if done_stage else []
        links: list[Link] = []
        dtype = np.dtype(source.dtype)
        for step in steps:
            params = step.typed_params()
            op = OPS[step.op]
            value_from = None
            if op.kind(params) == "reduction":
                value_from = self._reduction(step)
                after.append(value_from)
            try:
                dtype = np.dtype(op.dtype(params, dtype))
            except ValueError as exc:
                raise ConfigError(f"step '{step.name}': {exc}") from None
            links.append(
                Link(step.name, step.op, step.params, self._halo(step), str(dtype), value_from)
            )
        return source, tuple(links), after

    def _resolved(self, step: Step) -> Step:
        """The step as it runs: a predict step becomes its `op: model` step."""
        return self.expanded.get(step.name, step)

    def _usable(self, name: str, halo: int) -> bool:
        if name not in self.materialised:
            return False
        _, _, exact_only = self.materialised[name]
        return not exact_only or halo == 0

    def _image_source(
        self, first: Step, channel: int | None = None, field: str = "input.channel"
    ) -> Source:
        requested = first.input_ref.channel if channel is None else channel
        lv = self.meta.level(self.level)
        channel = None
        if self.c_axis is not None:
            channel = requested
            if channel is None:
                channel = int(self.roi_full.start[self.c_axis])
            n_channels = lv.shape[self.c_axis]
            if not 0 <= channel < n_channels:
                raise ConfigError(
                    f"step '{first.name}': {field} {channel} is out of range "
                    f"(the image has {n_channels} channels)"
                )
        elif requested is not None:
            raise ConfigError(f"step '{first.name}': {field} is set but the image has no c axis")
        return Source(lv.path, lv.dtype, self.bounds, self.c_axis, channel, self.scratch)

    def _tasks(
        self,
        chain: Sequence[Link],
        bounds: Roi,
        region: Roi,
        overlap: Sequence[int] | None = None,
    ) -> ChunkGrid:
        """One task per chunk of `region`; the chain computes the chunk grown by `overlap`
        (within `region`), and reads what that needs: grown by each link's halo, clipped
        to `bounds` (as `chain_boxes` does, in one step: clipping commutes with growing)."""
        halo = tuple(sum(link.halo[a] for link in chain) for a in range(len(self.axes)))
        return ChunkGrid(self.chunks, self.bounds, region, bounds, halo, tuple(overlap or ()))

    def _reduction(self, step: Step) -> str:
        """Stages for a reduction step; returns the name of the stage holding its value."""
        reduction = OPS[step.op].reduction(step.typed_params())
        last = f"{step.name}/reduce-{reduction.passes - 1}"
        if last in self.stages:
            return last
        source, links, after = self._chain(step, include_last=False)
        tasks = self._tasks(links, source.bounds, self.roi)
        link = Link(step.name, step.op, step.params, (0,) * len(self.axes), "", None)
        target = target_dtype = None
        if links:
            # The first pass also stores its input (e.g. the smoothed image) for the ROI,
            # so later passes and zero-halo chains read it instead of recomputing it.
            target, target_dtype = f"{self.scratch}/{step.name}/input", links[-1].dtype
        for pass_no in range(reduction.passes):
            name = f"{step.name}/reduce-{pass_no}"
            self.stages[name] = Stage(
                name,
                step.name,
                "reduce",
                source,
                (*links, link),
                tasks,
                tuple(after),
                target,
                target_dtype,
                pass_no=pass_no,
            )
            after = [*after, name]
            if target is not None:
                stored = Source(target, target_dtype, self.roi)
                self.materialised[step.source] = (stored, name, True)
                source, links, target, target_dtype = stored, (), None, None
                tasks = self._tasks(links, source.bounds, self.roi)
        return last

    def _blockwise_output(self, step: Step) -> None:
        source, links, after = self._chain(step, include_last=True)
        out = self._output(step, links[-1].dtype)
        target = f"{out.path}/{out.levels[0].path}"
        name = step.name
        self.stages[name] = Stage(
            name,
            step.name,
            "blockwise",
            source,
            links,
            self._tasks(links, source.bounds, self.roi),
            tuple(after),
            target,
            out.dtype,
            shards=out.levels[0].shards or (),
        )
        if any(link.op == "model" for link in links):
            # a model is costly: chains after it read its output instead of running it again
            self.materialised[step.name] = (Source(target, str(out.dtype), self.roi), name, True)
        self._pyramid(step, out, name)

    def _global(self, step: Step) -> None:
        if step.op == "instance":
            self._instance(step)
            return
        source, links, after = self._chain(step, include_last=False)
        params = step.typed_params()
        ndim = len(self.spatial)
        if params.connectivity > ndim:
            raise ConfigError(
                f"step '{step.name}': params.connectivity {params.connectivity} is more than "
                f"the {ndim} spatial axes"
            )
        label_link = Link(step.name, step.op, step.params, (0,) * len(self.axes), "uint32")
        chain = (*links, label_link)
        local = f"{self.scratch}/{step.name}/local"
        n = step.name
        tasks = self._tasks(chain, source.bounds, self.roi)
        self.stages[f"{n}/label"] = Stage(
            f"{n}/label",
            n,
            "label",
            source,
            chain,
            tasks,
            tuple(after),
            local,
            "uint32",
            connectivity=params.connectivity,
        )
        self._stitch(step, tasks, f"{n}/label", "faces", (), params.connectivity)

    def _instance(self, step: Step) -> None:
        """A segmenter on each chunk grown by the overlap (`segment`), then the stitching
        of label: pairs here come from matching the bands around each border."""
        source, links, after = self._chain(step, include_last=False)
        n = step.name
        overlap = self._halo(step)
        segment_link = Link(n, step.op, step.params, overlap, "uint32")
        tasks = self._tasks(links, source.bounds, self.roi, overlap)
        self.stages[f"{n}/segment"] = Stage(
            f"{n}/segment",
            n,
            "segment",
            source,
            (*links, segment_link),
            tasks,
            tuple(after),
            f"{self.scratch}/{n}/local",
            "uint32",
            region=self.roi,
        )
        self._stitch(step, tasks, f"{n}/segment", "match", (segment_link,))

    def _stitch(
        self,
        step: Step,
        tasks: ChunkGrid,
        after: str,
        pairs: Literal["faces", "match"],
        chain: tuple[Link, ...],
        connectivity: int = 1,
    ) -> None:
        """The stages after `after`, the pass that wrote provisional ids per chunk (and the
        faces around each chunk) to the step's local array: pairs of ids that are one
        object across chunk borders, one merge into consecutive ids, relabel, pyramid."""
        n = step.name
        local_source = Source(f"{self.scratch}/{n}/local", "uint32", self.roi)
        border_tasks = ChunkGrid(tasks.chunks, tasks.bounds, self.roi, self.roi, self._face_halo())
        self.stages[f"{n}/{pairs}"] = Stage(
            f"{n}/{pairs}",
            n,
            pairs,
            local_source,
            chain,
            border_tasks,
            (after,),
            connectivity=connectivity,
        )
        nothing = ChunkGrid.none(self.chunks, self.bounds)
        self.stages[f"{n}/merge"] = Stage(
            f"{n}/merge", n, "merge", None, (), nothing, (f"{n}/{pairs}",)
        )
        if step.output is not None:
            out = self._output(step, None)
            target = f"{out.path}/{out.levels[0].path}"
        else:
            out, target = None, f"{self.scratch}/{step.name}/final"
        relabel = f"{n}/relabel"
        own = ChunkGrid(tasks.chunks, tasks.bounds, self.roi, self.roi)
        self.stages[relabel] = Stage(
            relabel,
            n,
            "relabel",
            local_source,
            (),
            own,
            (f"{n}/merge",),
            target,
            None,
            shards=(out.levels[0].shards or ()) if out is not None else (),
        )
        self.materialised[step.name] = (Source(target, "uint64", self.roi), relabel, False)
        if out is not None:
            self._pyramid(step, out, relabel)

    def _measure(self, step: Step) -> None:
        """One "measure" stage: per chunk of the ROI, partials of the label step's output
        (and of the intensity chain over the same box); the driver combines them."""
        n = step.name
        labels, label_name, after = self._table_input(step)
        params = step.typed_params()
        extra: dict[str, Any] = {"labels": f"labels/{label_name}"}
        if params.intensity is None:
            if params.channel is not None:
                raise ConfigError(f"step '{n}': params.channel needs params.intensity: image")
        elif params.intensity != IMAGE:
            if params.channel is not None:
                raise ConfigError(
                    f"step '{n}': params.channel applies to params.intensity: image only"
                )
            extra["intensity_chain"] = [
                s.config() for s in self.pipeline.upstream(params.intensity)
            ]
        if self._reused(step, extra):
            return
        source: Source | None = None
        links: tuple[Link, ...] = ()
        if params.intensity == IMAGE:
            source = self._image_source(step, params.channel, "params.channel")
        elif params.intensity is not None:
            source, links, more = self._intensity_chain(step, params.intensity)
            after += more
        out = self._output(step, None, extra)
        self._table_stage(step, "measure", labels, source, links, after, out)

    def _evaluate(self, step: Step) -> None:
        """One "evaluate" stage: per chunk of the ROI, the contingency table of the label
        step's output against the reference label image; the driver adds them up."""
        labels, label_name, after = self._table_input(step)
        reference, reference_name, more = self._reference(step, label_name)
        extra = {"labels": f"labels/{label_name}", "reference": f"labels/{reference_name}"}
        if self._reused(step, extra):
            return
        out = self._output(step, None, extra)
        self._table_stage(step, "evaluate", labels, reference, (), after + more, out)

    def _table_stage(
        self,
        step: Step,
        kind: StageKind,
        labels: Source,
        source: Source | None,
        links: tuple[Link, ...],
        after: list[str],
        out: OutputPlan,
    ) -> None:
        """A table's stage: one task per chunk of the ROI, reading the labels (and `source`
        through `links`) over its box."""
        bounds = source.bounds if source is not None else self.bounds
        name = f"{step.name}/{kind}"
        self.stages[name] = Stage(
            name,
            step.name,
            kind,
            source,
            links,
            self._tasks(links, bounds, self.roi),
            tuple(dict.fromkeys(after)),
            out.path,
            "float64",
            labels=labels,
        )

    def _train(self, step: Step) -> None:
        """One "train" stage: per chunk of the ROI, the op's chain (its last link maps the
        block to features, with their halo) and the annotations over the same box."""
        n = step.name
        users = [s.name for s in self.pipeline.steps if n in (s.source, *s.extra_inputs().values())]
        if users:
            raise ConfigError(f"step '{users[0]}': input '{n}' is a model, not an image")
        params = step.typed_params()
        if step.output is not None:
            raise ConfigError(
                f"step '{n}': op '{step.op}' writes the model {model_path(params.model)} "
                "(params.model); it takes no output"
            )
        labels = self._annotations(step, params.annotations)
        extra = {"annotations": f"labels/{params.annotations}"}
        if self._reused(step, extra):
            return
        source, links, after = self._chain(step, include_last=True)
        self._output(step, None, extra)
        name = f"{n}/train"
        self.stages[name] = Stage(
            name,
            n,
            "train",
            source,
            links,
            self._tasks(links, source.bounds, self.roi),
            tuple(after),
            labels=labels,
        )

    def _annotations(self, step: Step, name: str) -> Source:
        """The label image `labels/<name>` at the processing level, as a per-chunk source."""
        where = f"step '{step.name}': params.annotations"
        folder = Path(self.meta.path) / "labels"
        try:
            labels = read_image(folder / name)
        except NgffError:
            found = ", ".join(sorted(p.name for p in folder.glob("*/"))) or "none"
            raise ConfigError(
                f"{where}: no label image '{name}' in {folder} (found: {found})"
            ) from None
        if len(labels.levels) <= self.level or labels.level(self.level).shape != self.shape:
            raise ConfigError(
                f"{where}: labels/{name} has no level of the image's shape {self.shape} "
                f"at level {self.level}"
            )
        level = labels.level(self.level)
        if not np.issubdtype(np.dtype(level.dtype), np.integer):
            raise ConfigError(f"{where}: labels/{name} holds {level.dtype}, not integer classes")
        return Source(f"labels/{name}/{level.path}", level.dtype, self.bounds)

    def _table_input(self, step: Step) -> tuple[Source, str, list[str]]:
        """The label image a table step reads: the label output of its input step."""
        n = step.name
        if step.output is None or step.output.kind != "table":
            raise ConfigError(
                f"step '{n}': op '{step.op}' needs output: {{kind: table, name: ...}}"
            )
        users = [s.name for s in self.pipeline.steps if s.source == n]
        if users:
            raise ConfigError(f"step '{users[0]}': input '{n}' is a table, not an image")
        found = None if step.source == IMAGE else self._label_output(step.source)
        if found is None:
            raise ConfigError(
                f"step '{n}': input '{step.source}' must be a step that writes a label output "
                "(output: {kind: label, name: ...}), so the table can point at it"
            )
        return found

    def _label_output(self, name: str) -> tuple[Source, str, list[str]] | None:
        """The label output of step `name` (its array, its name on disk, the stage to wait
        for), or None if `name` is no step writing one."""
        step = next((s for s in self.pipeline.steps if s.name == name), None)
        if step is None or step.output is None or step.output.kind != "label":
            return None
        decision, _, _ = self.decisions[name]  # decided: tables are planned last
        if name in self.materialised:
            source, stage, _ = self.materialised[name]
        else:  # a blockwise step writing integer labels
            out = next(o for o in self.outputs if o.step == name)
            source = Source(f"{out.path}/{out.levels[0].path}", out.dtype or "uint32", self.roi)
            stage = name
        return source, decision.name, [stage] if stage else []

    def _reference(self, step: Step, label_name: str) -> tuple[Source, str, list[str]]:
        """What an evaluate step compares with: a step's label output, or a label image in
        the zarr of the same shape as the label output at the processing level."""
        n, name = step.name, step.typed_params().reference
        found = self._label_output(name)
        if found is not None:
            return found
        if name in {s.name for s in self.pipeline.steps}:
            raise ConfigError(
                f"step '{n}': params.reference '{name}' is a step without a label output "
                "(output: {kind: label, name: ...})"
            )
        meta = self.existing.labels.get(name)
        if meta is None:
            known = ", ".join(self.existing.label_names) or "none"
            raise ConfigError(
                f"step '{n}': params.reference '{name}' is no step and no label image in "
                f"{self.meta.path}/labels (label images: {known})"
            )
        path = f"labels/{name}"
        writer = next((o.step for o in self.outputs if o.path == path), None)
        if writer is not None:
            raise ConfigError(
                f"step '{n}': params.reference '{name}': {path} is written by step '{writer}' "
                f"in this run; to compare with its new result, use reference: {writer}"
            )
        level = meta.levels[self.level] if self.level < len(meta.levels) else None
        if level is None or meta.axis_names != self.axis_names or level.shape != self.shape:
            found_shape = "no such level" if level is None else f"shape {list(level.shape)}"
            raise ConfigError(
                f"step '{n}': params.reference '{name}' has {found_shape} (axes "
                f"{list(meta.axis_names)}) at level {self.level}, but the label output "
                f"'{label_name}' has shape {list(self.shape)} (axes {list(self.axis_names)})"
            )
        source = Source(
            f"{path}/{level.path}", level.dtype, Roi.from_shape(level.shape, self.level)
        )
        return source, name, []

    def _intensity_chain(self, step: Step, name: str) -> tuple[Source, tuple[Link, ...], list]:
        """The chain computing an intensity step over a chunk box, as a blockwise output's."""
        try:
            istep = self.pipeline.step(name)
        except KeyError:
            raise ConfigError(
                f"step '{step.name}': params.intensity '{name}' is no step and not 'image'"
            ) from None
        if istep.op in TABLE_OPS:
            raise ConfigError(f"step '{step.name}': params.intensity '{name}' is a table")
        if name not in self.materialised and self._kind(istep) == "global":
            self._global(istep)
        if name in self.materialised and self._usable(name, 0):
            source, stage, _ = self.materialised[name]
            return source, (), [stage] if stage else []
        source, links, after = self._chain(istep, include_last=True)
        return source, links, after

    def _face_halo(self) -> tuple[int, ...]:
        return tuple(1 if i in self.spatial else 0 for i in range(len(self.axes)))

    def _decide(
        self, step: Step, extra: dict[str, Any] | None = None
    ) -> tuple[Decision, dict[str, Any], str]:
        """Provenance, config hash and what happens to a step's output (once per step)."""
        if step.name in self.decisions:
            return self.decisions[step.name]
        target = step.writes()
        assert target is not None
        upstream = self.pipeline.upstream(step.name)
        models = {
            s.name: model_version(self.expanded[s.name])
            for s in upstream
            if s.name in self.expanded
        }
        provenance = {
            "step": step.name,
            "chain": [s.config() for s in upstream],
            "input": str(self.meta.path),
            "level": self.level,
            "ops": {s.op: OPS[s.op].version for s in upstream},
            **({"models": models} if models else {}),
            **(extra or {}),
        }
        # the path the image was opened by (relative, absolute, after a move) is not part
        # of what was computed: the output lives inside that image whichever path it is
        digest = config_hash({k: v for k, v in provenance.items() if k != "input"})
        stored = self.existing.outputs.get(target, ())
        keep = step.output is not None and step.output.versions == "keep"  # models: none
        decision = decide(
            target[1], keep, digest, provenance, self._roi_json(), stored, self.overwrite
        )
        self.decisions[step.name] = (decision, provenance, digest)
        return self.decisions[step.name]

    def _reused(self, step: Step, extra: dict[str, Any] | None = None) -> bool:
        """True when the step's output is stored already for this config and ROI: it is
        then read where chains need it, and none of its stages are planned."""
        decision, _, _ = self._decide(step, extra)
        if decision.reuse is None:
            return False
        out = self._output_plan(step, decision.reuse.dtype)
        self.reused.append(out)
        if out.kind not in ("table", "model"):
            # as the result of a run: labels as a whole; a blockwise result is exact only
            # inside the ROI, so a chain needing a halo around it computes it again
            source = Source(f"{out.path}/{out.levels[0].path}", out.dtype or "uint32", self.roi)
            self.materialised[step.name] = (source, None, self._kind(step) != "global")
        return True

    def _output(
        self, step: Step, dtype: str | None, extra: dict[str, Any] | None = None
    ) -> OutputPlan:
        """The output a step writes: its `output:`, or the model artifact it trains."""
        self._decide(step, extra)
        label = step.output is not None and step.output.kind == "label"
        if dtype is not None:
            np_dtype = np.dtype(dtype)
            if np_dtype == np.bool_:
                dtype = "uint8"
            elif label and not np.issubdtype(np_dtype, np.integer):
                raise ConfigError(
                    f"step '{step.name}': output kind 'label' needs integer data, "
                    f"but this step makes {np_dtype}"
                )
        out = self._output_plan(step, dtype)
        self.outputs.append(out)
        return out

    def _output_plan(self, step: Step, dtype: str | None) -> OutputPlan:
        decision, provenance, digest = self.decisions[step.name]
        target = step.writes()
        assert target is not None
        kind = target[0]
        return OutputPlan(
            step=step.name,
            kind=kind,
            name=decision.name,
            dtype=dtype,
            axes=self.axes,
            levels=() if kind == "model" else self._output_levels(step),
            provenance=provenance,
            config_hash=digest,
            version=decision.version,
            op=step.op,
        )

    def _output_levels(self, step: Step) -> tuple[LevelSpec, ...]:
        keep = [i for i in range(len(self.meta.axes)) if i != self.c_axis]
        shards = self._shards(step)
        levels = []
        for k, lv in enumerate(self.meta.levels[self.level :]):
            chunks = tuple(lv.chunks[i] for i in keep)
            if shards is not None and any(s % c for s, c in zip(shards, chunks, strict=True)):
                raise ConfigError(
                    f"step '{step.name}': output.shards {list(shards)} must be a multiple of "
                    f"the chunks {list(chunks)} (level s{k})"
                )
            levels.append(
                LevelSpec(
                    path=f"s{k}",
                    shape=tuple(lv.shape[i] for i in keep),
                    chunks=chunks,
                    scale=tuple(lv.scale[i] for i in keep),
                    translation=tuple(lv.translation[i] for i in keep),
                    shards=shards,
                )
            )
        return tuple(levels)

    def _shards(self, step: Step) -> tuple[int, ...] | None:
        shards = step.output.shards if step.output is not None else None
        if shards is None:
            return None
        if step.output is not None and step.output.kind == "table":
            raise ConfigError(f"step '{step.name}': output.shards applies to images and labels")
        if self.meta.version != "0.5":
            raise ConfigError(
                f"step '{step.name}': output.shards needs zarr v3 (NGFF 0.5); "
                f"{self.meta.path} is NGFF {self.meta.version}"
            )
        if len(shards) != len(self.axes):
            raise ConfigError(
                f"step '{step.name}': output.shards has {len(shards)} values; the output has "
                f"{len(self.axes)} axes ({', '.join(self.axis_names)})"
            )
        return tuple(int(s) for s in shards)

    def _pyramid(self, step: Step, out: OutputPlan, after: str) -> None:
        region = self.roi
        previous = after
        for k in range(1, len(out.levels)):
            lower, upper = out.levels[k - 1], out.levels[k]
            factors = downsample_factors(lower, upper)
            region = Roi(
                tuple(a // f for a, f in zip(region.start, factors, strict=True)),
                tuple(
                    min(-(-b // f), s)
                    for b, f, s in zip(region.stop, factors, upper.shape, strict=True)
                ),
                self.level + k,
            )
            bounds = Roi.from_shape(upper.shape, self.level + k)
            lower_bounds = Roi.from_shape(lower.shape, self.level + k - 1)
            tasks = ChunkGrid(upper.chunks, bounds, region, lower_bounds, factors=factors)
            name = f"{step.name}/pyramid-{k}"
            self.stages[name] = Stage(
                name,
                step.name,
                "pyramid",
                Source(f"{out.path}/{lower.path}", out.dtype or "uint64", lower_bounds),
                (),
                tasks,
                (previous,),
                f"{out.path}/{upper.path}",
                out.dtype,
                level=k,
                connectivity=0 if out.kind == "label" else 1,
                grid=upper.chunks,
                shards=upper.shards or (),
            )
            previous = name


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


def downsample_factors(lower: LevelSpec, upper: LevelSpec) -> tuple[int, ...]:
    """Integer factors between two pyramid levels, from their scales (1 where unchanged)."""
    return tuple(max(1, round(u / lo)) for lo, u in zip(lower.scale, upper.scale, strict=True))


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
        scratch=f"{ENGINE_GROUP}/diff",
    )


def _processing_level(pipeline: Pipeline) -> int:
    levels = {s.input_ref.level for s in pipeline.steps if s.source == IMAGE}
    if len(levels) > 1:
        raise ConfigError(
            f"steps read the image at different levels {sorted(levels)}; use one level"
        )
    return levels.pop() if levels else 0


def summarize(plan: Plan) -> list[dict[str, Any]]:
    """Per stage: tasks, chunks and bytes read and written, halo. For `plan` and run stats."""
    rows = []
    for stage in plan.stages:
        halo = [sum(link.halo[i] for link in stage.chain) for i in range(len(plan.axes))]
        read_bytes = write_bytes = read_chunks = 0
        tasks = stage.tasks
        if stage.labels is not None:
            read_bytes += tasks.volume("write") * np.dtype(stage.labels.dtype).itemsize
            read_chunks += tasks.volume("write", plan.chunks, stage.labels.bounds)
        if stage.source is not None:
            read_bytes += tasks.volume("read") * np.dtype(stage.source.dtype).itemsize
            if stage.kind != "pyramid":
                read_chunks += tasks.volume("read", plan.chunks, stage.source.bounds)
            if stage.target is not None and stage.kind not in TABLE_OPS:
                out_size = np.dtype(stage.target_dtype or "uint32").itemsize
                write_bytes = tasks.volume("write") * out_size
        rows.append(
            {
                "stage": stage.name,
                "kind": stage.kind,
                "tasks": len(stage.tasks),
                "chunks_read": read_chunks,
                "chunks_written": len(stage.tasks) if write_bytes else 0,
                "bytes_read": read_bytes,
                "bytes_written": write_bytes,
                "halo": dict(zip(plan.axes, halo, strict=True)),
            }
        )
    return rows


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


def layout_hash(plan: Plan) -> str:
    """A hash of what a run's chunk results depend on: per stage its kind, chain (step
    configs), source, target and its tasks' grid (which gives every task's boxes); the
    chunking; the ROI; the outputs' config hashes. The run id (in scratch paths) is left
    out, so a resumed run matches.

    Per-chunk done markers carry it: a marker is only trusted by a plan with the same hash.
    """
    digest = hashlib.sha256()

    def add(value: Any) -> None:
        digest.update(str(value).replace(plan.scratch, "<scratch>").encode())
        digest.update(b"\0")

    add((plan.level, plan.roi, plan.axes, plan.spatial, plan.chunks))
    add(sorted((o.path, o.config_hash, o.dtype) for o in plan.outputs))
    if plan.reused:
        add(sorted((o.path, o.config_hash) for o in plan.reused))
    for stage in plan.stages:
        add((stage.name, stage.kind, stage.source, stage.target, stage.target_dtype))
        add((stage.chain, stage.after, stage.pass_no, stage.level, stage.connectivity))
        add(stage.labels)
        if stage.region is not None:
            add(stage.region)
        add(stage.tasks)
    return digest.hexdigest()[:16]
