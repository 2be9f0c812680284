"""The pool a run's chunk tasks go to (engine/execute/pools.py): threads of this process
for a small local run, else a dask client from engine/execute/cluster.py, imported only
then (see engine/execute/placement.py for why)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

from engine.core.errors import EngineError
from engine.core.pipeline import ClusterSpec
from engine.core.worker_env import stop_worker_server, use_worker_heap
from engine.execute.placement import ClusterArg, resolve_cluster, uses_warm
from engine.execute.pools import TaskPool, thread_pool


@contextmanager
def task_pool(
    workers: int | None = None,
    scheduler: str | None = None,
    cluster: ClusterArg = None,
    config: ClusterSpec | None = None,
    resources: dict[str, float] | None = None,
    warm: bool | None = None,
    idle_timeout: float | None = None,
    in_process: bool = False,
) -> Iterator[TaskPool]:
    """The pool a run's tasks go to: threads of this process for a small local run
    (`in_process`, from `small_enough`) that goes neither to a given scheduler nor to
    the warm engine nor needs worker resources; else a dask client from
    `engine.execute.cluster.connect` (same arguments)."""
    spec = resolve_cluster(config, cluster)
    local = scheduler is None and spec.kind == "local"
    if in_process and local and not resources and not uses_warm(warm, workers, resources):
        threads = workers or os.cpu_count() or 1
        if threads < 1:
            raise EngineError(f"--workers must be at least 1, got {threads}")
        stop_worker_server()
        use_worker_heap()
        with thread_pool(threads) as pool:
            yield pool
        return
    from engine.execute.cluster import connect
    from engine.execute.dask_pool import DaskPool

    with connect(workers, scheduler, cluster, config, resources, warm, idle_timeout) as client:
        yield DaskPool(client)
