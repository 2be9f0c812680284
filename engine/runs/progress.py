"""Chunks done per stage, as a run's progress callback (`run(progress=...)`) reports
them: the one tally that a run in a thread (`submit`) and a batch job's progress.json
(engine/runs/batch.py) read. `on_change(stage, final)` is called after each change;
`final` is true when a stage starts or completes, so a mirror written at most every so
often still writes those."""

from __future__ import annotations

import threading
from collections.abc import Callable


class StageCounts:
    def __init__(self, on_change: Callable[[str, bool], None] | None = None) -> None:
        self.stages: dict[str, list[int]] = {}
        self.on_change = on_change

    def __call__(self, stage: str, total: int) -> Callable[[int], None]:
        self.stages[stage] = [0, total]
        self._changed(stage, True)

        def advance(n: int) -> None:
            counts = self.stages[stage]
            counts[0] += n
            self._changed(stage, counts[0] >= total)

        return advance

    def snapshot(self) -> dict[str, tuple[int, int]]:
        """(done, total) per stage started so far."""
        return {name: (done, total) for name, (done, total) in list(self.stages.items())}

    def _changed(self, stage: str, final: bool) -> None:
        if self.on_change is not None:
            self.on_change(stage, final)


ProgressFn = Callable[[str, int], Callable[[int], None]]


class OverallProgress:
    """One count across the units of a collection run (a plate's fields, an ROI table's
    ROIs), for the caller's progress callback: two bars instead of one per stage per
    unit (which restarted with every field): `<label>` (chunk tasks done of every unit's
    plan, counted before the first unit starts) and `units done`. `unit()` is the
    progress callback one unit's run gets; its stage starts are absorbed, its chunks
    counted. Units run in threads side by side: counting is under a lock."""

    UNITS = "units done"

    def __init__(self, progress: ProgressFn, label: str, tasks: int, units: int) -> None:
        self._lock = threading.Lock()
        self._tasks = progress(label, tasks)
        self._units = progress(self.UNITS, units)

    def unit(self) -> ProgressFn:
        def start(stage: str, total: int) -> Callable[[int], None]:
            def advance(n: int) -> None:
                with self._lock:
                    self._tasks(n)

            return advance

        return start

    def unit_done(self, tasks_left: int = 0) -> None:
        """A unit finished (or was found done); `tasks_left`: its planned chunk tasks that
        it did not report (a unit found done on --resume, or one that failed)."""
        with self._lock:
            if tasks_left:
                self._tasks(tasks_left)
            self._units(1)


def stoppable(
    progress: Callable[[str, int], Callable[[int], None]] | None, stopping: threading.Event
) -> Callable[[str, int], Callable[[int], None]]:
    """A unit's progress callback that also stops the unit (KeyboardInterrupt in its
    thread, so its run records itself `killed`) once the collection run is stopping:
    signals reach the main thread only."""

    def start(stage: str, total: int) -> Callable[[int], None]:
        advance = progress(stage, total) if progress is not None else None

        def step(n: int) -> None:
            if stopping.is_set():
                raise KeyboardInterrupt("the collection run stopped")
            if advance is not None:
                advance(n)

        return step

    return start
