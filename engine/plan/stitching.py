"""Compile rules for global label steps: exact connected components ("label") and
instance segmentation ("instance") across chunks, as four stages each: provisional ids
per chunk, pairs of ids across chunk borders, one merge, relabel (engine/worker/labels.py).

A mixin of the compiler (engine/plan/compiler.py).
"""

from __future__ import annotations

from typing import Literal

from engine.core.errors import ConfigError
from engine.core.grid import ChunkGrid
from engine.core.pipeline import Step
from engine.plan.types import Link, Source, Stage


class StitchRules:
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

    def _face_halo(self) -> tuple[int, ...]:
        return tuple(1 if i in self.spatial else 0 for i in range(len(self.axes)))
