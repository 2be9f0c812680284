"""Driving a Plan on dask.distributed through futures.

Stages run in plan order; within a stage, chunk tasks are grouped into batches
(neighbouring chunks together, since plan order is C order) so that the
scheduler's per-task cost is paid per batch, not per chunk. Reductions, the
label merge and measurement tables are combined here, on the driver, from small
per-chunk results.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from distributed import Client, as_completed

from engine import compute
from engine.errors import EngineError
from engine.geometry import Roi, chunks_touching
from engine.markers import KEEP_RESULTS, ChunkMarker, Markers
from engine.plan import ChunkTask, Plan, Stage, downsample_factors
from tasks import OPS
from tasks.evaluate import Counts, combine_counts
from tasks.label import resolve_components
from tasks.measure import Partial, combine_partials

BATCHES_PER_WORKER = 4


@dataclass(frozen=True)
class StageStats:
    name: str
    kind: str
    tasks: int
    seconds: float
    done: int = 0  # chunk tasks this run computed
    skipped: int = 0  # chunk tasks marked done by an earlier attempt (--resume)


@dataclass(frozen=True)
class LabelResult:
    """What a label merge produced: how many objects, and the dtype they need."""

    count: int
    dtype: str


class TaskFailed(EngineError):
    """A chunk task kept failing; `stage` and `index` say which one."""

    def __init__(self, message: str, stage: str = "", index: tuple[int, ...] = ()) -> None:
        super().__init__(message)
        self.stage = stage
        self.index = index

    def __reduce__(self) -> tuple[Any, ...]:
        return (TaskFailed, (str(self), self.stage, self.index))


def _run_batch(kind: str, root: str, stage: Stage, items: list, common: dict) -> list:
    """Run a batch of chunk tasks on a worker. Each is tried `retries` more times after a
    failure (with backoff); each is marked done (markers.py) right after it succeeds."""
    marker = ChunkMarker(root, common["marker"]) if common.get("marker") else None
    retries, backoff = common.get("retries", 0), common.get("backoff", 0.2)
    results = []
    for task, extra in items:
        for attempt in range(retries + 1):
            try:
                result = _run_one(kind, root, stage, task, extra, common)
                break
            except EngineError:
                raise
            except Exception as exc:
                if attempt < retries:
                    time.sleep(backoff * 2**attempt)
                    continue
                tries = f" (after {attempt + 1} attempts)" if attempt else ""
                if isinstance(exc, compute.StepFailed):
                    message = (
                        f"step '{exc.step}' failed on chunk {task.write} (stage {stage.name})"
                        f"{tries}: {type(exc.error).__name__}: {exc.error}"
                    )
                else:
                    message = (
                        f"step '{stage.step}' ({stage.name}) failed on chunk {task.write}"
                        f"{tries}: {type(exc).__name__}: {exc}"
                    )
                raise TaskFailed(message, stage.name, tuple(task.index)) from exc
        if marker is not None:
            marker.mark(task.index, result)
        results.append(result if marker is None or kind in KEEP_RESULTS else None)
    return results


def _run_one(kind: str, root: str, stage: Stage, task: ChunkTask, extra: Any, common: dict) -> Any:
    spatial, ctx, values = common["spatial"], common["context"], common["values"]
    if kind == "blockwise":
        return compute.run_blockwise(root, stage, task.read, task.write, spatial, ctx, values)
    if kind == "reduce":
        return compute.run_reduce(root, stage, task.read, task.write, spatial, ctx, values)
    if kind == "label":
        return compute.run_label(root, stage, task, spatial, ctx, values)
    if kind == "faces":
        return compute.run_faces(root, stage, task, spatial, common["chunks"], extra)
    if kind == "relabel":
        return compute.run_relabel(root, stage, task.write, extra)
    if kind == "pyramid":
        return compute.run_pyramid(root, stage, task.read, task.write, common["factors"])
    if kind == "measure":
        return compute.run_measure(root, stage, task, spatial, ctx, values)
    if kind == "evaluate":
        return compute.run_evaluate(root, stage, task)
    raise ValueError(f"unknown stage kind {kind}")


def morton_key(index: Sequence[int]) -> int:
    """Z-order of a chunk index: consecutive keys are spatially compact groups of chunks,
    so a batch shares its neighbours' decoded chunks instead of a thin row of them."""
    key = 0
    for bit in range(max((int(i).bit_length() for i in index), default=0)):
        for axis, i in enumerate(index):
            key |= ((int(i) >> bit) & 1) << (bit * len(index) + axis)
    return key


class Executor:
    """Runs one plan. `prepare_output(step, dtype, count)` is called before a stage writes
    an output, so the run decides where and how outputs are created."""

    def __init__(
        self,
        client: Client,
        root: str,
        plan: Plan,
        prepare_output: Callable[[str, str | None, int | None], int],
        progress: Callable[[str, int], Callable[[int], None]] | None = None,
        markers: Markers | None = None,
        retries: int = 0,
        backoff: float = 0.2,
        on_stage: Callable[[StageStats], None] | None = None,
    ) -> None:
        self.client = client
        self.markers = markers
        self.retries = retries
        self.backoff = backoff
        self.on_stage = on_stage
        self.current: tuple[str, int, int] | None = None  # stage, computed, skipped
        self.root = root
        self.plan = plan
        self.prepare_output = prepare_output
        self.progress = progress
        self.values: dict[str, dict[Any, Any]] = {}
        self.counts: dict[str, list[int]] = {}
        self.pairs: dict[str, np.ndarray] = {}
        self.tables: dict[str, tuple[np.ndarray, list[int]]] = {}
        self.labels: dict[str, LabelResult] = {}
        self.measurements: dict[str, Partial] = {}
        self.evaluations: dict[str, Counts] = {}
        self.merge_stats: dict[str, dict[str, float]] = {}
        self.workers = max(1, len(client.scheduler_info().get("workers", {})))

    def run(self) -> list[StageStats]:
        stats = []
        for stage in self.plan.stages:
            started = time.perf_counter()
            self.current = (stage.name, 0, 0)
            getattr(self, f"_{stage.kind}")(stage)
            _, done, skipped = self.current
            stat = StageStats(
                stage.name,
                stage.kind,
                len(stage.tasks),
                time.perf_counter() - started,
                done,
                skipped,
            )
            stats.append(stat)
            if self.on_stage is not None:
                self.on_stage(stat)
        return stats

    def _common(self, stage: Stage, **extra: Any) -> dict[str, Any]:
        needed = {link.value_from for link in stage.chain if link.value_from}
        if stage.kind == "reduce":
            needed.add(f"{stage.step}/reduce-{stage.pass_no - 1}")
        values = {k: v for k, v in self.values.items() if k in needed}
        return {
            "spatial": self.plan.spatial,
            "context": self.plan.context,
            "values": values,
            "chunks": self.plan.chunks,
            **extra,
        }

    def _map(self, stage: Stage, extras: Sequence[Any] | None = None, **common: Any) -> list[Any]:
        """Run every task of a stage in batches; results in task order."""
        tasks = stage.tasks
        if not tasks:
            return []
        extras = extras if extras is not None else [None] * len(tasks)
        results: list[Any] = [None] * len(tasks)
        shipped = dataclasses.replace(stage, tasks=())
        shared = self._common(stage, **common)
        todo = range(len(tasks))
        if self.markers is not None:
            done = self.markers.prepare(stage)
            todo = [i for i in todo if tasks[i].index not in done]
            for i in range(len(tasks)):
                if tasks[i].index in done:
                    results[i] = self.markers.load_result(stage, tasks[i].index)
            shared["marker"] = self.markers.worker_info(stage)
        shared["retries"], shared["backoff"] = self.retries, self.backoff
        skipped = len(tasks) - len(todo)
        self.current = (stage.name, 0, skipped)
        size = max(1, math.ceil(len(todo) / (self.workers * BATCHES_PER_WORKER)))
        order = sorted(todo, key=lambda i: morton_key(tasks[i].index))
        futures = {}
        for start in range(0, len(order), size):
            members = order[start : start + size]
            items = [(tasks[i], extras[i]) for i in members]
            future = self.client.submit(
                _run_batch, stage.kind, self.root, shipped, items, shared, pure=False
            )
            futures[future] = members
        advance = self.progress(stage.name, len(tasks)) if self.progress else None
        if advance and skipped:
            advance(skipped)
        for future in as_completed(futures):
            members = futures[future]
            try:
                batch_results = future.result()
            except EngineError as exc:
                for other in futures:
                    other.cancel()
                if isinstance(exc, TaskFailed):
                    raise TaskFailed(f"{exc}; ROI {self.plan.roi}", exc.stage, exc.index) from None
                raise
            for i, result in zip(members, batch_results, strict=True):
                results[i] = result
            name, computed, skipped = self.current
            self.current = (name, computed + len(members), skipped)
            if advance:
                advance(len(members))
        return results

    def _reduce(self, stage: Stage) -> None:
        if stage.target is not None:
            self.prepare_output(f"{stage.step}/input", stage.target_dtype, None)
        link = stage.chain[-1]
        op = OPS[link.op]
        params = op.params.model_validate(link.params)
        reduction = op.reduction(params)
        combined: dict[Any, Any] = {}
        for partials in self._map(stage):
            for t, partial in partials.items():
                combined[t] = reduction.combine(combined[t], partial) if t in combined else partial
        previous = self.values.get(f"{stage.step}/reduce-{stage.pass_no - 1}", {})
        try:
            self.values[stage.name] = {
                t: reduction.finish(c, params, stage.pass_no, previous.get(t))
                for t, c in combined.items()
            }
        except ValueError as exc:
            raise EngineError(f"step '{stage.step}': {exc}") from None

    def _blockwise(self, stage: Stage) -> None:
        self.prepare_output(stage.step, stage.target_dtype, None)
        self._map(stage)

    def _label(self, stage: Stage) -> None:
        self.prepare_output(f"{stage.step}/local", "uint32", None)
        self.counts[stage.step] = self._map(stage)

    def _bases(self, stage: Stage) -> dict[tuple[int, ...], int]:
        counts = self.counts[stage.step]
        offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        return {t.index: int(offsets[i]) for i, t in enumerate(stage.tasks)}

    def _faces(self, stage: Stage) -> None:
        bases = self._bases(stage)
        bounds = Roi.from_shape(tuple(int(b) for b in self.plan.roi.stop), self.plan.level)
        extras = [
            {
                idx: bases[idx]
                for idx, _ in chunks_touching(t.read, self.plan.chunks, bounds)
                if idx in bases
            }
            for t in stage.tasks
        ]
        found = self._map(stage, extras)
        self.pairs[stage.step] = (
            np.concatenate(found) if found else np.zeros((0, 2), dtype=np.uint64)
        )

    def _merge(self, stage: Stage) -> None:
        counts = self.counts[stage.step]
        final = resolve_components(int(sum(counts)), self.pairs.pop(stage.step)).astype(np.uint64)
        count = int(final.max(initial=0))
        offset = self.prepare_output(stage.step, "uint64" if count >= 2**32 else "uint32", count)
        final[final > 0] += np.uint64(offset)
        dtype = "uint32" if count + offset < 2**32 else "uint64"
        self.tables[stage.step] = (final.astype(dtype), counts)
        self.labels[stage.step] = LabelResult(count, dtype)

    def _relabel(self, stage: Stage) -> None:
        final, counts = self.tables.pop(stage.step)
        offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        extras = [
            np.concatenate([final[:1], final[offsets[i] + 1 : offsets[i] + counts[i] + 1]])
            for i in range(len(stage.tasks))
        ]
        self._map(stage, extras)

    def _measure(self, stage: Stage) -> None:
        """Per-chunk partials combined into one row per object; the run writes the table."""
        parts = self._map(stage)
        started = time.perf_counter()
        rows = sum(len(p["label"]) for p in parts)
        combined = combine_partials(parts) if parts else None
        if combined is None:
            raise EngineError(f"step '{stage.step}': the ROI is empty: nothing to measure")
        self.measurements[stage.step] = combined
        self.merge_stats[stage.step] = {
            "partial_rows": rows,
            "objects": len(combined["label"]),
            "seconds": time.perf_counter() - started,
            "partial_bytes": sum(v.nbytes for p in parts for v in p.values()),
            "table_bytes": sum(v.nbytes for v in combined.values()),
        }

    def _evaluate(self, stage: Stage) -> None:
        """Per-chunk contingency tables added up into one; the run scores it."""
        self.evaluations[stage.step] = combine_counts(self._map(stage))

    def _pyramid(self, stage: Stage) -> None:
        out = next(o for o in self.plan.outputs if o.step == stage.step)
        factors = downsample_factors(out.levels[stage.level - 1], out.levels[stage.level])
        self._map(stage, factors=factors)
