"""Compile rules for steps whose output is not an image: tables (`op: measure`,
`op: evaluate`: one stage after everything else, per chunk of the ROI, combined on the
driver) and trained models (one "train" stage: features and annotations per chunk).

A mixin of the compiler (engine/plan/compiler.py).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from engine.core.errors import ConfigError
from engine.core.geometry import Roi
from engine.core.pipeline import IMAGE, Step
from engine.io.models import model_path
from engine.io.ngff_write import output_path
from engine.plan.types import Link, OutputPlan, Source, Stage

TABLE_OPS = ("measure", "evaluate")  # ops whose output is a table: one stage of that kind


class TableRules:
    def _measure(self, step: Step) -> None:
        """One "measure" stage: per chunk of the ROI, partials of the label step's output
        (and of the intensity chain over the same box); the driver combines them."""
        n = step.name
        labels, label_name, after = self._table_input(step)
        params = step.typed_params()
        extra: dict[str, Any] = {"labels": output_path("label", label_name)}
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
        extra = {
            "labels": output_path("label", label_name),
            "reference": output_path("label", reference_name),
        }
        if self._reused(step, extra):
            return
        out = self._output(step, None, extra)
        self._table_stage(step, "evaluate", labels, reference, (), after + more, out)

    def _table_stage(
        self,
        step: Step,
        kind: str,
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
        extra = {"annotations": output_path("label", params.annotations)}
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
        """The label image `labels/<name>` at the processing level, as a per-chunk source
        (from the snapshot of the zarr the run read, engine/runs/existing.py: metadata
        only, so the plan touches no pixels)."""
        where = f"step '{step.name}': params.annotations"
        labels = self.existing.labels.get(name)
        if labels is None:
            found = ", ".join(self.existing.label_names) or "none"
            raise ConfigError(
                f"{where}: no label image '{name}' in {self.meta.path}/labels (found: {found})"
            )
        if len(labels.levels) <= self.level or labels.level(self.level).shape != self.shape:
            raise ConfigError(
                f"{where}: labels/{name} has no level of the image's shape {self.shape} "
                f"at level {self.level}"
            )
        level = labels.level(self.level)
        if not np.issubdtype(np.dtype(level.dtype), np.integer):
            raise ConfigError(f"{where}: labels/{name} holds {level.dtype}, not integer classes")
        return Source(f"{output_path('label', name)}/{level.path}", level.dtype, self.bounds)

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
        path = output_path("label", name)
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
