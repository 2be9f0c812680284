"""The stage kinds: one entry each, everything the engine knows about a kind of stage.

A compile rule (engine/plan/chains.py, stitching.py, table_rules.py, outputs.py) emits
stages of a kind; the entry says what a worker computes for each of its chunks, what the
driver does before they go and after they are all done, what the done markers keep and
whether the stage writes array chunks (the memory projection and `plan` count those).
The executor (engine/execute/executor.py), the markers (engine/state/markers.py), the
memory projection (engine/plan/memory.py) and the plan report read only this table, so a
new kind is this one entry plus its worker and compile functions.

Driver-side functions take the executor as a `Driver` (engine/worker/driver.py): the
plan, what earlier stages combined, and the few effects a kind needs; never dask.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from engine.worker import chain, importing, labels, pyramid, tables
from tasks import OPS

Work = Callable[..., Any]  # work(root, stage, task, extra, common) -> per-chunk result
DriverStep = Callable[..., Any]  # step(driver, stage)


@dataclass(frozen=True)
class StageKind:
    work: Work | None  # per chunk task, on a worker; None: the stage runs on the driver only
    # driver, before the chunks go: create what the stage writes
    prepare: DriverStep | None = None
    # driver, before the chunks go: position -> what a task gets besides its boxes
    extra: DriverStep | None = None
    # driver, once every chunk is done (a barrier): fold the per-chunk results
    finish: DriverStep | None = None
    # on the worker, per batch: fold the batch's results into its first (a reduction tree)
    fold: Callable[..., Any] | None = None
    # the done markers keep each chunk's result: the driver combines them (after a resume too)
    keeps_results: bool = False
    # the target is an array written chunk by chunk (not a table or a model)
    writes_chunks: bool = True
    # what the driver's finish (or the table it leads to) imports: loaded in the
    # background when a run starts (engine/core/preload.py)
    driver_modules: tuple[str, ...] = ()


TABLE_MODULES = ("anndata.io", "pandas")  # evaluations and models read earlier tables


KINDS: dict[str, StageKind] = {
    "blockwise": StageKind(chain.run_blockwise, prepare=chain.prepare_blockwise),
    "reduce": StageKind(
        chain.run_reduce,
        prepare=chain.prepare_reduce,
        finish=chain.finish_reduce,
        fold=chain.fold_reduction,
        keeps_results=True,
    ),
    "label": StageKind(labels.run_label, prepare=labels.prepare_local, keeps_results=True),
    # the whole ROI in one task, final ids straight into the output (engine/plan/stitching.py)
    "label-block": StageKind(
        labels.run_label_block,
        prepare=labels.prepare_block,
        extra=labels.block_offset,
        finish=labels.finish_block,
        keeps_results=True,
    ),
    "segment": StageKind(labels.run_segment, prepare=labels.prepare_local, keeps_results=True),
    "segment-block": StageKind(
        labels.run_segment_block,
        prepare=labels.prepare_block,
        extra=labels.block_offset,
        finish=labels.finish_block,
        keeps_results=True,
    ),
    # the merge resolves the pairs these find with scipy.sparse.csgraph (0.12 to 0.15 s to
    # import, holding the GIL the task threads need): a merge of whole blocks has none
    "faces": StageKind(
        labels.run_faces,
        extra=labels.face_bases,
        keeps_results=True,
        driver_modules=("scipy.sparse.csgraph",),
    ),
    "match": StageKind(
        labels.run_match,
        extra=labels.face_bases,
        keeps_results=True,
        driver_modules=("scipy.sparse.csgraph",),
    ),
    "merge": StageKind(None, finish=labels.merge),
    "relabel": StageKind(labels.run_relabel, extra=labels.relabel_tables),
    "pyramid": StageKind(pyramid.run_pyramid),
    "import": StageKind(importing.run_import, extra=importing.source_of),
    "measure": StageKind(
        tables.run_measure,
        finish=tables.combine_measure,
        keeps_results=True,
        writes_chunks=False,  # written without anndata (engine/io/anndata_zarr.py)
    ),
    "evaluate": StageKind(
        tables.run_evaluate,
        finish=tables.combine_evaluate,
        keeps_results=True,
        writes_chunks=False,
        driver_modules=TABLE_MODULES,
    ),
    "train": StageKind(
        tables.run_train,
        finish=tables.combine_train,
        keeps_results=True,
        writes_chunks=False,
        driver_modules=TABLE_MODULES,
    ),
}


def driver_modules(stages: Iterable[Any]) -> list[str]:
    """The modules the driver will import for these stages, each once, in stage order."""
    return list(dict.fromkeys(m for stage in stages for m in KINDS[stage.kind].driver_modules))


def op_modules(stages: Iterable[Any]) -> list[str]:
    """The modules the ops of these stages' chains load on first use (`OpSpec.loads`),
    each once: what a run on threads of this process loads ahead for its tasks: none
    for the standard pipeline with the compiled kernels, where scipy.ndimage alone was
    0.25 s of imports holding the GIL beside the first tasks."""
    found = (
        OPS[link.op].loads(OPS[link.op].params.model_validate(link.params))
        for stage in stages
        for link in stage.chain
    )
    return list(dict.fromkeys(m for modules in found for m in modules))
