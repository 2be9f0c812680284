"""A dask.distributed client as the executor's `TaskPool` (engine/execute/pools.py)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from distributed import Client, Future, as_completed


class DaskPool:
    shares_process = False

    def __init__(self, client: Client) -> None:
        self.client = client
        self.dashboard_link: str | None = client.dashboard_link
        workers = client.scheduler_info().get("workers", {}).values()
        self.slots = max(1, sum(int(w.get("nthreads", 1)) for w in workers))

    def submit(
        self,
        function: Callable[..., Any],
        *args: Any,
        after: Sequence[Future] = (),
        priority: int = 0,
        resources: dict[str, float] | None = None,
    ) -> Future:
        # the tasks waited for go as arguments: dask runs a task once its arguments are
        # computed (the function takes them as `*after` and ignores them)
        return self.client.submit(
            function, *args, *after, pure=False, priority=priority, resources=resources
        )

    def completions(self) -> as_completed:
        return as_completed(loop=self.client.loop)  # this client's, not a default one

    def on_each_worker(self, function: Callable[[], Any]) -> dict[str, Any]:
        # on_error="ignore": a worker may leave meanwhile (an adaptive SLURM worker
        # retiring before its walltime)
        return self.client.run(function, on_error="ignore")

    def call(self, function: Callable[..., Any], *args: Any) -> Any:
        return self.client.submit(function, *args, pure=False).result()

    def memory(self) -> tuple[int, int]:
        workers = self.client.scheduler_info().get("workers", {}).values()
        limits = [int(w.get("memory_limit") or 0) for w in workers]
        threads = max((int(w.get("nthreads", 1)) for w in workers), default=1)
        return min((m for m in limits if m), default=0), threads

    def resources(self) -> list[dict[str, float]]:
        return [w.get("resources", {}) for w in self.client.scheduler_info()["workers"].values()]
