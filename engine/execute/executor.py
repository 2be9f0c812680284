"""Driving a Plan on a task pool (dask.distributed's, or threads of this process:
engine/execute/pools.py) through futures, chunk by chunk.

Chunk tasks are grouped into batches (neighbouring chunks together, in Z order)
so the scheduler's per-task cost is paid per batch, not per chunk; each chunk is
still marked done on its own. A batch depends on the batches of earlier stages
that write what its chunks read (those around its box: a batch is compact), so a
chunk of a later stage starts as soon as its inputs are written: reductions and
the label merge are the only barriers, where the driver combines small per-chunk
results. Batches are handed to dask in waves, a bounded number in flight, later
stages first, so the scheduler never holds a graph the size of the plan; and the
driver holds per chunk a few bytes in numpy arrays (its batch, the batch order),
never a Python object: tasks are computed from the stage's grid when they go.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import resource
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from engine.core import cpu
from engine.core.errors import EngineError
from engine.core.geometry import Roi
from engine.core.grid import ChunkTask
from engine.execute.batching import Batches, batch, batch_size
from engine.execute.pools import TaskPool
from engine.io.chunk_cache import drop_cached
from engine.io.downsample import downsample_factors
from engine.io.location import Where, for_workers
from engine.plan.kinds import KINDS
from engine.plan.types import Plan, Stage
from engine.state.markers import ChunkMarker, Markers
from engine.worker.chain import StepFailed
from engine.worker.labels import LabelResult
from tasks.evaluate import Counts
from tasks.label import FaceComponents
from tasks.measure import Partial

IN_FLIGHT_PER_WORKER = 16  # batches handed to dask at once, per worker
PREVIEW_PRIORITY = 1_000_000  # added to dask priority for chunks in the priority box


@dataclass(frozen=True)
class StageStats:
    name: str
    kind: str
    tasks: int
    seconds: float
    done: int = 0  # chunk tasks this run computed
    skipped: int = 0  # chunk tasks marked done by an earlier attempt (--resume)
    # CPU seconds by part (engine/core/cpu.py): the workers' (compute, decode, encode, io,
    # their own scheduling) and the driver's for this stage (scheduling)
    cpu: dict[str, float] = field(default_factory=dict)


class TaskFailed(EngineError):
    """A chunk task kept failing; `stage` and `index` say which one."""

    def __init__(self, message: str, stage: str = "", index: tuple[int, ...] = ()) -> None:
        super().__init__(message)
        self.stage = stage
        self.index = index

    def __reduce__(self) -> tuple[Any, ...]:
        return (TaskFailed, (str(self), self.stage, self.index))


def _run_batch(
    kind: str,
    root: Where,
    stage: Stage,
    positions: np.ndarray,
    extras: list | None,
    common: dict,
    *after: Any,
) -> tuple[list, tuple[float, ...]]:
    """Run a batch of chunk tasks on a worker: those at `positions` in the stage's grid,
    with what the driver adds to each (`extras`, None: nothing); `after`: the batches it
    waited for. Positions go as one array, which dask ships without looking inside. Each
    task is tried `retries` more times after a failure (with backoff); each is marked
    done (markers.py) right after it succeeds. Returns the results and the batch's CPU
    seconds by part (engine/core/cpu.py)."""
    cpu.start(common.get("shared_process", False))
    marker = ChunkMarker(root, common["marker"]) if common.get("marker") else None
    tasks = stage.tasks.tasks_at(positions)
    items = zip(positions.tolist(), tasks, extras or [None] * len(positions), strict=True)
    try:
        results = _run_tasks(kind, root, stage, items, common, marker)
    finally:
        if marker is not None:
            marker.close()
    return results, cpu.stop()


def _run_tasks(
    kind: str,
    root: Where,
    stage: Stage,
    items: Iterable[tuple[int, ChunkTask, Any]],
    common: dict,
    marker: ChunkMarker | None,
) -> list:
    retries, backoff = common.get("retries", 0), common.get("backoff", 0.2)
    results = []
    for position, task, extra in items:
        for attempt in range(retries + 1):
            try:
                cpu.switch(cpu.COMPUTE)
                result = _run_one(kind, root, stage, task, extra, common)
                cpu.switch(cpu.IO)  # the done marker
                break
            except EngineError:
                raise
            except Exception as exc:
                if attempt < retries:
                    time.sleep(backoff * 2**attempt)
                    continue
                tries = f" (after {attempt + 1} attempts)" if attempt else ""
                if isinstance(exc, StepFailed):
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
            marker.mark(position, result)
        keep = marker is None or KINDS[kind].keeps_results
        results.append(result if keep else None)
    cpu.switch(cpu.SCHEDULING)
    fold = KINDS[kind].fold
    return fold(stage, results) if fold is not None else results


def _run_one(
    kind: str, root: Where, stage: Stage, task: ChunkTask, extra: Any, common: dict
) -> Any:
    work = KINDS[kind].work
    assert work is not None, f"stage kind {kind} has no chunk tasks"
    return work(root, stage, task, extra, common)


@dataclass
class _StageRun:
    """One stage's progress through the run: its batches, how many went to dask, and per
    task (numpy, a few bytes each) the batch computing it; results only where the driver
    combines them."""

    stage: Stage
    order: int
    batches: Batches
    batch_of: np.ndarray  # per task: its batch, -1 when done by an earlier attempt
    results: list[Any] | None
    extra: Callable[[int], Any] | None  # what the driver adds to the task at a position
    shared: dict[str, Any]
    started: float
    advance: Callable[[int], None] | None
    submitted: int = 0  # batches handed to dask, in order
    remaining: int = 0  # batches not yet completed
    done: int = 0
    skipped: int = 0
    seconds: float | None = None  # set when complete
    cpu: np.ndarray = field(default_factory=lambda: np.zeros(len(cpu.PARTS)))  # workers'
    head_deps: list[tuple[_StageRun, np.ndarray]] | None = field(default=None, repr=False)


class Executor:
    """Runs one plan. `prepare_output(step, dtype, count)` is called before a stage writes
    an output, so the run decides where and how outputs are created. `priority` is a box
    (plan level, work axes) whose chunks every stage computes before its others."""

    def __init__(
        self,
        pool: TaskPool,
        root: Where,
        plan: Plan,
        prepare_output: Callable[[str, str | None, int | None], int],
        progress: Callable[[str, int], Callable[[int], None]] | None = None,
        markers: Markers | None = None,
        retries: int = 0,
        backoff: float = 0.2,
        on_stage: Callable[[StageStats], None] | None = None,
        priority: Roi | None = None,
    ) -> None:
        self.pool = pool
        self.markers = markers
        self.retries = retries
        self.backoff = backoff
        self.on_stage = on_stage
        self.priority = priority
        # workers may run in another folder (the warm engine's, a SLURM job's): a local
        # image goes to them by its absolute path
        self.root = for_workers(root)
        self.plan = plan
        self.prepare_output = prepare_output
        self.progress = progress
        self.values: dict[str, dict[Any, Any]] = {}
        self.components: dict[str, FaceComponents] = {}
        self.labels: dict[str, LabelResult] = {}
        self.measurements: dict[str, Partial] = {}
        self.models: dict[str, Any] = {}  # train step -> fitted model, for the run to save
        self.evaluations: dict[str, Counts] = {}
        self.merge_stats: dict[str, dict[str, float]] = {}
        self.workers = pool.slots  # workers times their threads
        self.max_in_flight = self.workers * IN_FLIGHT_PER_WORKER
        self.runs: dict[str, _StageRun] = {}
        self.stats: dict[str, StageStats] = {}
        self.live: dict[tuple[int, int], Any] = {}  # (stage order, batch) -> in flight
        self.completed = pool.completions()
        self.owner: dict[Any, tuple[_StageRun, int]] = {}
        self.peak_memory: dict[str, int] = {}
        self.clock = cpu.DriverClock()

    def run(self) -> list[StageStats]:
        self.pool.on_each_worker(reset_peak_memory)
        for stage in self.plan.stages:
            self._start(stage)
        self._drain(lambda: not self.live and all(r.remaining == 0 for r in self.runs.values()))
        self.peak_memory = self.pool.on_each_worker(peak_memory)
        for name, stat in self.stats.items():  # with the driver's time after completion
            self.stats[name] = dataclasses.replace(stat, cpu=self.stage_cpu(name))
        return [self.stats[s.name] for s in self.plan.stages]

    def stage_cpu(self, name: str) -> dict[str, float]:
        """CPU seconds by part of a stage so far: its workers' and the driver's."""
        run = self.runs.get(name)
        parts = run.cpu.copy() if run is not None else np.zeros(len(cpu.PARTS))
        parts[cpu.SCHEDULING] += self.clock.spent.get(name, 0.0)
        return cpu.as_dict(parts.tolist())

    def _start(self, stage: Stage) -> None:
        """What the stage's kind (engine/plan/kinds.py) asks of the driver: create what it
        writes, queue its chunks with what each gets, and fold their results at the end
        (a barrier; stages after it queue only once it is done)."""
        kind = KINDS[stage.kind]
        with self.clock.charged(stage.name):
            if kind.prepare is not None:
                kind.prepare(self, stage)
            if kind.work is not None:
                self._enqueue(stage, kind.extra(self, stage) if kind.extra is not None else None)
            if kind.finish is not None:
                kind.finish(self, stage)

    def in_progress(self) -> dict[str, tuple[int, int]]:
        """Stages started but not complete: (chunks computed, chunks skipped)."""
        return {n: (r.done, r.skipped) for n, r in self.runs.items() if r.seconds is None}

    def _common(self, stage: Stage, **extra: Any) -> dict[str, Any]:
        needed = {link.value_from for link in stage.chain if link.value_from}
        if stage.pass_no:  # a later pass of a reduction: the value of the one before
            needed.add(f"{stage.step}/reduce-{stage.pass_no - 1}")
        values = {k: v for k, v in self.values.items() if k in needed}
        return {
            "spatial": self.plan.spatial,
            "context": self.plan.context,
            "values": values,
            "chunks": self.plan.chunks,
            "shared_process": self.pool.shares_process,
            **extra,
        }

    def _enqueue(self, stage: Stage, extra: Callable[[int], Any] | None = None, **common: Any):
        """Queue every chunk task of a stage in batches; they go to dask as `_pump` allows.
        `extra(position)` is what the driver adds to a task, computed as its batch goes."""
        tasks = stage.tasks
        count = len(tasks)
        shared = self._common(stage, **common)
        keep = KINDS[stage.kind].keeps_results
        results: list[Any] | None = [None] * count if keep else None
        finished = np.zeros(count, bool)
        if self.markers is not None and count:
            done = self.markers.prepare(stage)
            finished[done.positions] = True
            if results is not None:
                for position, result in done.results.items():
                    results[position] = result
            shared["marker"] = self.markers.worker_info(stage)
        shared["retries"], shared["backoff"] = self.retries, self.backoff
        todo = np.flatnonzero(~finished)
        preview = self._preview_box(stage)
        batches = batch(
            tasks,
            todo,
            batch_size(len(todo), self.workers, stage.batch_size),
            stage.shards,
            tasks.touching(preview) if preview is not None and count else None,
            self.workers,
        )
        advance = self.progress(stage.name, count) if self.progress and count else None
        run = _StageRun(
            stage,
            len(self.runs),
            batches,
            batches.owners(count),
            results,
            extra,
            shared,
            time.perf_counter(),
            advance,
        )
        run.skipped = count - len(todo)
        run.remaining = len(batches)
        if advance and run.skipped:
            advance(run.skipped)
        self.runs[stage.name] = run
        if not run.remaining:
            self._complete(run)
        self._pump()
        return run

    def _deps(self, run: _StageRun, k: int) -> list[tuple[_StageRun, np.ndarray]]:
        """Batches of unfinished earlier stages whose chunks batch `k` reads (or writes):
        those touching the box around its tasks' boxes (a batch is compact, in Z order)."""
        stage = run.stage
        boxes = stage.tasks.hull(run.batches.members(k))
        deps = []
        for name in stage.after:
            upstream = self.runs.get(name)
            if upstream is None or upstream.seconds is not None:
                continue
            positions = np.concatenate([upstream.stage.tasks.positions_in(b) for b in boxes])
            found = np.unique(upstream.batch_of[positions])
            found = found[found >= 0]
            if len(found):
                deps.append((upstream, found))
        return deps

    def _preview_box(self, stage: Stage) -> Roi | None:
        """The priority box in the coordinates of the stage's tasks (its pyramid level)."""
        if self.priority is None:
            return None
        if stage.level == 0:  # not a pyramid level
            return self.priority
        out = next(o for o in self.plan.outputs if o.step == stage.step)
        factors = downsample_factors(out.levels[0], out.levels[stage.level])
        box = self.priority
        return Roi(
            tuple(a // f for a, f in zip(box.start, factors, strict=True)),
            tuple(-(-b // f) for b, f in zip(box.stop, factors, strict=True)),
            box.level + stage.level,
        )

    def _pump(self) -> None:
        """Submit waiting batches, later stages first, up to the in-flight bound; a batch
        goes only once every batch it depends on has gone."""
        for run in sorted(self.runs.values(), key=lambda r: -r.order):
            while run.submitted < len(run.batches) and len(self.live) < self.max_in_flight:
                if run.head_deps is None:
                    run.head_deps = self._deps(run, run.submitted)
                if any((found >= up.submitted).any() for up, found in run.head_deps):
                    break
                self._submit(run, run.submitted, run.head_deps)
                run.submitted += 1
                run.head_deps = None

    def _submit(self, run: _StageRun, k: int, deps: list[tuple[_StageRun, np.ndarray]]) -> None:
        with self.clock.charged(run.stage.name):
            self._submit_batch(run, k, deps)

    def _submit_batch(
        self, run: _StageRun, k: int, deps: list[tuple[_StageRun, np.ndarray]]
    ) -> None:
        stage = run.stage
        members = run.batches.members(k)
        extras = [run.extra(p) for p in members.tolist()] if run.extra is not None else None
        waits = [
            self.live[(up.order, d)]
            for up, found in deps
            for d in found.tolist()
            if (up.order, d) in self.live
        ]
        future = self.pool.submit(
            _run_batch,
            stage.kind,
            self.root,
            stage,
            members,
            extras,
            run.shared,
            after=waits,
            priority=run.order + (PREVIEW_PRIORITY if k < run.batches.preview else 0),
            resources=dict(stage.resources) or None,
        )
        self.live[(run.order, k)] = future
        self.owner[future] = (run, k)
        self.completed.add(future)

    def _drain(self, until: Callable[[], bool]) -> None:
        """Handle finished batches (and submit more) until `until()` holds."""
        self._pump()
        while not until():
            if not self.live:
                raise RuntimeError("the executor waits for work that was never submitted")
            future = next(self.completed)
            run, k = self.owner.pop(future)
            del self.live[(run.order, k)]
            with self.clock.charged(run.stage.name):
                self._finished(run, k, future)
            self._pump()

    def _finished(self, run: _StageRun, k: int, future: Any) -> None:
        """A batch is done: keep its results and CPU times, advance its stage."""
        try:
            batch_results, batch_cpu = future.result()
        except EngineError as exc:
            for other in self.owner:
                other.cancel()
            if isinstance(exc, TaskFailed):
                raise TaskFailed(f"{exc}; ROI {self.plan.roi}", exc.stage, exc.index) from None
            raise
        run.cpu += batch_cpu
        members = run.batches.members(k)
        if run.results is not None:
            for position, result in zip(members.tolist(), batch_results, strict=True):
                run.results[position] = result
        run.done += len(members)
        run.remaining -= 1
        if run.advance:
            run.advance(len(members))
        if not run.remaining:
            self._complete(run)

    def _complete(self, run: _StageRun) -> None:
        run.seconds = time.perf_counter() - run.started
        self.record(run.stage, run.seconds, run.done, run.skipped)
        source = run.stage.source
        key = source.cache_key if source is not None else None
        if key is not None and self._read_for_the_last_time(key):
            self.pool.on_each_worker(functools.partial(drop_cached, (self.root, key)))

    def _read_for_the_last_time(self, cache_key: str) -> bool:
        """Whether every stage reading through the chunk cache under `cache_key` is done."""
        readers = (
            s for s in self.plan.stages if s.source is not None and s.source.cache_key == cache_key
        )
        return all(s.name in self.runs and self.runs[s.name].seconds is not None for s in readers)

    def record(self, stage: Stage, seconds: float, done: int = 0, skipped: int = 0) -> None:
        stat = StageStats(
            stage.name,
            stage.kind,
            len(stage.tasks),
            seconds,
            done,
            skipped,
            self.stage_cpu(stage.name),
        )
        self.stats[stage.name] = stat
        if self.on_stage is not None:
            self.on_stage(stat)

    def collect(self, *names: str) -> list[list[Any]]:
        """Wait for whole stages (a barrier) and return their per-task results."""
        runs = [self.runs[n] for n in names]
        self._drain(lambda: all(r.seconds is not None for r in runs))
        return [r.results for r in runs]

    def on_worker(self, function: Callable[..., Any], *args: Any) -> Any:
        return self.pool.call(function, *args)


def reset_peak_memory() -> None:
    """Start a worker's peak-RSS count afresh (Linux: 5 to clear_refs resets VmHWM)."""
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")


def peak_memory() -> int:
    """A worker's peak resident memory since the last reset, in bytes."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
