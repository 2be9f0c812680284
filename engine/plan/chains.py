"""Compile rules for chains of blockwise ops: walking upstream from a step to the
nearest materialised source (the image, or an array the run writes or reuses), the halo
each link adds, the chunk tasks, and reductions (Otsu, percentiles) as their own stages
whose value the chain receives.

A mixin of the compiler (engine/plan/compiler.py): it shares the compiler's state
(`self.stages`, `self.materialised`, ...), which `compiler.Compiler.__init__` sets.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from engine.core.errors import ConfigError
from engine.core.geometry import Roi
from engine.core.grid import ChunkGrid
from engine.core.pipeline import IMAGE, Step
from engine.plan.table_rules import TABLE_OPS
from engine.plan.types import Link, Source, Stage
from tasks import OPS

# a reduction's passes run as at least this many tasks where the ROI allows
# (`_reduction_chunks`), each at least MIN_SPLIT voxels along the axes it splits and
# MIN_TASK_VOXELS in all (a smaller task costs more to schedule than it computes)
REDUCTION_TASKS = 4
MIN_SPLIT = 16
MIN_TASK_VOXELS = 2**20


class ChainRules:
    def _kind(self, step: Step) -> str:
        return OPS[step.op].kind(step.typed_params())

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
        chunks: Sequence[int] | None = None,
    ) -> ChunkGrid:
        """One task per chunk of `region`; the chain computes the chunk grown by `overlap`
        (within `region`), and reads what that needs: grown by each link's halo, clipped
        to `bounds` (as `chain_boxes` does, in one step: clipping commutes with growing)."""
        halo = self._chain_halo(chain)
        return ChunkGrid(
            tuple(chunks or self.chunks), self.bounds, region, bounds, halo, tuple(overlap or ())
        )

    def _chain_halo(self, chain: Sequence[Link]) -> tuple[int, ...]:
        return tuple(sum(link.halo[a] for link in chain) for a in range(len(self.axes)))

    def _reduction_chunks(self, chain: Sequence[Link], bounds: Roi) -> tuple[int, ...]:
        """The blocks of a reduction's passes (and of the input its first pass stores):
        the image's chunks, halved along the longest spatial axis while the ROI gives
        fewer than REDUCTION_TASKS of them, a half stays at least MIN_SPLIT voxels and
        twice the chain's halo there, and a task at least MIN_TASK_VOXELS. A reduction
        over one chunk then still uses both cores: the 64x256x256 sample's gaussian and
        Otsu passes ran as one task each (0.10 to 0.19 s and 0.06 s) on one of two
        threads, and take 0.10 and 0.02 s as four."""
        chunks, halo = list(self.chunks), self._chain_halo(chain)
        count = len(self._tasks(chain, bounds, self.roi, chunks=chunks))
        while count < REDUCTION_TASKS:
            fits = [a for a in self.spatial if chunks[a] // 2 >= max(MIN_SPLIT, 2 * halo[a])]
            if not fits:
                break
            axis = max(fits, key=lambda a: min(chunks[a], self.roi.shape[a]))
            halved = [*chunks[:axis], -(-chunks[axis] // 2), *chunks[axis + 1 :]]
            more = len(self._tasks(chain, bounds, self.roi, chunks=halved))
            if self.roi.size < more * MIN_TASK_VOXELS:
                break
            chunks, count = halved, more
        return tuple(chunks)

    def _reduction(self, step: Step) -> str:
        """Stages for a reduction step; returns the name of the stage holding its value."""
        reduction = OPS[step.op].reduction(step.typed_params())
        last = f"{step.name}/reduce-{reduction.passes - 1}"
        if last in self.stages:
            return last
        source, links, after = self._chain(step, include_last=False)
        chunks = self._reduction_chunks(links, source.bounds)
        tasks = self._tasks(links, source.bounds, self.roi, chunks=chunks)
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
                tasks = self._tasks(links, source.bounds, self.roi, chunks=chunks)
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
