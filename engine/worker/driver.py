"""What the driver offers the driver side of a stage kind (engine/plan/kinds.py): the
plan, what earlier stages combined, and the few effects a kind needs. The executor
(engine/execute/executor.py) is the one implementation; kinds never see dask.

A worker function has the signature `work(root, stage, task, extra, common)`: the image's
root, the stage, its chunk task (boxes and grid index), what the driver adds to this task
(`StageKind.extra`), and what every task of the stage shares (`common`: spatial axes,
op context, reduction values, chunk shape).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from engine.plan.types import Plan, Stage


class Driver(Protocol):
    plan: Plan
    values: dict[str, dict[Any, Any]]  # reduction stage -> time point -> its value
    components: dict[str, Any]  # label step -> its face components, until relabel
    labels: dict[str, Any]  # label step -> LabelResult (engine/worker/labels.py)
    measurements: dict[str, Any]  # measure step -> one row per object
    models: dict[str, Any]  # train step -> the fitted model
    evaluations: dict[str, Any]  # evaluate step -> the contingency table
    merge_stats: dict[str, dict[str, float]]  # step -> numbers about its combine
    # the caller's progress bars: (name, total) -> advance(n); None when nobody watches
    progress: Callable[[str, int], Callable[[int], None]] | None

    def prepare_output(self, key: str, dtype: str | None, count: int | None) -> int:
        """Create what a stage writes before its chunks go; returns the id offset."""
        ...

    def collect(self, *names: str) -> list[list[Any]]:
        """Wait for whole stages (a barrier); their per-chunk results."""
        ...

    def on_worker(self, function: Callable[..., Any], *args: Any) -> Any:
        """Run one function on a worker and wait for its result."""
        ...

    def record(self, stage: Stage, seconds: float) -> None:
        """Record a stage that ran on the driver only."""
        ...
