"""Chunks done per stage, as a run's progress callback (`run(progress=...)`) reports
them: the one tally that a run in a thread (`submit`) and a batch job's progress.json
(engine/runs/batch.py) read. `on_change(stage, final)` is called after each change;
`final` is true when a stage starts or completes, so a mirror written at most every so
often still writes those."""

from __future__ import annotations

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
