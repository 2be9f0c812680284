"""Compile rules for global label steps: exact connected components ("label") and
instance segmentation ("instance") across chunks, as four stages each: provisional ids
per chunk, pairs of ids across chunk borders, one merge, relabel (engine/worker/labels.py).

Small ROIs label in whole blocks. When the ROI of one time point, rounded out to whole
chunks, holds at most `LABEL_BLOCK_VOXELS`, "label" runs one task per time point (per
chunk along time) over the whole ROI: it has no interior border, so no "faces" stage. When
that is one task in all (no time axis, or one time point), it writes final ids 1..n
straight into the output ("label-block"): no scratch array, merge or relabel either.
Instance segmentation does the same ("segment-block") when its ROI is inside one chunk;
over several chunks it stays per chunk (the segmenter is costly: one block would run it
on one core).
Measured (gaussian -> Otsu -> label, 2 workers): on 4x64x512x512 in 1x32x256x256 chunks
the faces stage cost 0.2 CPU s plus 0.29 s of scheduling and relabel 0.47 CPU s (decoding
and encoding the whole label image again); on 64x256x256 in one chunk, faces and merge
still took about 0.2 s of wall time each although there is no border at all. With
blocks (same machine, under load 5-7, NGFF_ENGINE_LABEL_BLOCK_VOXELS=0 against the
default, two runs each): on 64x256x256 the label stages take 0.05 s of wall time instead
of 0.26-0.39 s (CPU 0.04 s instead of 0.09-0.14 s), the run 2.4-2.5 s instead of
3.3-3.7 s; on the time series, 8 label and relabel tasks instead of 96 and no faces stage,
for about the same CPU (1.46-1.56 s in both: ndimage.label of a whole frame costs what
the faces pass saves).

A mixin of the compiler (engine/plan/compiler.py).
"""

from __future__ import annotations

import os
from typing import Literal

from engine.core.errors import ConfigError
from engine.core.geometry import Roi
from engine.core.grid import ChunkGrid
from engine.core.pipeline import Step
from engine.plan.types import Link, Source, Stage

# Voxels of the largest ROI per time point (rounded out to whole chunks) labelled as one
# block. 16 Mi: a 64x512x512 frame fits. Such a task holds its input (the smoothed frame
# Otsu stored, float32: 64 MiB), the mask, the labels and the ids it writes: 0.4 GiB by the
# memory projection (engine/plan/memory.py, 25 bytes a voxel); measured on the 4x64x512x512
# time series, 0.33 GiB peak per worker process in all (0.27 GiB labelling per chunk).
# 32 Mi (the 128x512x512 sample in one block) projected 0.8 GiB a task, 1.4 GiB a worker:
# refused by workers of 1 GiB that label it per chunk, for no faster run (12.4 s per
# chunk, 12.7 s as one block, end to end on a loaded machine).
LABEL_BLOCK_VOXELS = 16 * 2**20
BLOCK_VOXELS_ENV = "NGFF_ENGINE_LABEL_BLOCK_VOXELS"


def label_block_voxels() -> int:
    """The block budget: NGFF_ENGINE_LABEL_BLOCK_VOXELS when set (0: always per chunk,
    as before whole blocks existed), else LABEL_BLOCK_VOXELS."""
    text = os.environ.get(BLOCK_VOXELS_ENV)
    if text is None or not text.strip():
        return LABEL_BLOCK_VOXELS
    try:
        return int(text)
    except ValueError:
        raise ConfigError(f"{BLOCK_VOXELS_ENV}: '{text}' is not a number of voxels") from None


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
        tasks, blocks = self._label_tasks(chain, source.bounds)
        if blocks and len(tasks) == 1:
            self._block(step, "label", source, chain, tasks, after, params.connectivity)
            return
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
            region=self.roi,
        )
        self._stitch(step, tasks, f"{n}/label", "faces", (), params.connectivity)

    def _label_tasks(self, chain: tuple[Link, ...], bounds: Roi) -> tuple[ChunkGrid, bool]:
        """The label stage's tasks and whether they are whole blocks: per chunk, or
        blocks when the ROI per time point (rounded out to whole chunks; a time chunk
        counted whole) holds at most `label_block_voxels()`. A block grid keeps the time
        axis' chunks and has one block along each spatial axis: [0, the ROI's stop rounded
        up to a chunk), a multiple of the chunk, so a block writes whole chunks and no
        chunk has two writers.

        A chain that needs a halo (a filter before the label) stays per chunk when that
        gives more tasks: one block would run the filter on one core instead of all."""
        per_chunk = self._tasks(chain, bounds, self.roi)
        block, voxels = self._roi_block()
        if voxels > label_block_voxels():
            return per_chunk, False
        halo = tuple(sum(link.halo[a] for link in chain) for a in range(len(self.axes)))
        blocks = ChunkGrid(tuple(block), self.bounds, self.roi, bounds, halo)
        if any(halo) and len(blocks) < len(per_chunk):
            return per_chunk, False
        return blocks, True

    def _roi_block(self) -> tuple[tuple[int, ...], int]:
        """The block of a time point (a chunk along time): per spatial axis [0, the ROI's
        stop rounded up to a chunk); and its voxels from the ROI's start rounded down."""
        roi = self.roi.intersect(self.bounds)
        block, voxels = [], 1
        for a, c in enumerate(self.chunks):
            if a not in self.spatial:
                block.append(c)
                voxels *= c
                continue
            low = roi.start[a] // c * c
            high = min(-(-roi.stop[a] // c) * c, self.shape[a])
            block.append(max(high, 1))
            voxels *= high - low
        return tuple(block), voxels

    def _block(
        self,
        step: Step,
        first: Literal["label", "segment"],
        source: Source,
        chain: tuple[Link, ...],
        tasks: ChunkGrid,
        after: list[str],
        connectivity: int = 1,
        region: Roi | None = None,
    ) -> None:
        """One task labels (or segments) the whole ROI and writes final ids 1..n (after
        the output's largest id on --update) straight into the output, or the step's final
        array; the pyramid follows it. The stage keeps the name of the pass it replaces."""
        n = step.name
        if step.output is not None:
            out = self._output(step, None)
            target, shards = f"{out.path}/{out.levels[0].path}", out.levels[0].shards or ()
        else:
            out, target, shards = None, f"{self.scratch}/{n}/final", ()
        name = f"{n}/{first}"
        self.stages[name] = Stage(
            name,
            n,
            f"{first}-block",
            source,
            chain,
            tasks,
            tuple(after),
            target,
            "uint32",
            connectivity=connectivity,
            shards=shards,
            region=region,
        )
        self.materialised[step.name] = (Source(target, "uint64", self.roi), name, False)
        if out is not None:
            self._pyramid(step, out, name)

    def _instance(self, step: Step) -> None:
        """A segmenter on each chunk grown by the overlap (`segment`), then the stitching
        of label: pairs here come from matching the bands around each border."""
        source, links, after = self._chain(step, include_last=False)
        n = step.name
        overlap = self._halo(step)
        segment_link = Link(n, step.op, step.params, overlap, "uint32")
        tasks = self._tasks(links, source.bounds, self.roi, overlap)
        if len(tasks) == 1 and self._roi_block()[1] <= label_block_voxels():
            # the ROI in one chunk: its one task writes final ids, as one label block does
            chain = (*links, segment_link)
            self._block(step, "segment", source, chain, tasks, after, region=self.roi)
            return
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
        merge_after = after
        if any(border_tasks.shape[a] > 1 for a in self.spatial):  # else no interior border
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
            merge_after = f"{n}/{pairs}"
        nothing = ChunkGrid.none(self.chunks, self.bounds)
        merge = Stage(f"{n}/merge", n, "merge", None, (), nothing, (merge_after,))
        self.stages[f"{n}/merge"] = merge
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
