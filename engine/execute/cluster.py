"""Getting a dask client: a LocalCluster the engine starts, an existing scheduler, or
dask workers in SLURM jobs (engine/execute/slurm.py). `connect` is the one entry point."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from distributed import Client, LocalCluster

from engine.errors import ConfigError, EngineError
from engine.pipeline import ClusterSpec, _first_error

ClusterArg = ClusterSpec | dict[str, Any] | str | None


def resolve_cluster(config: ClusterSpec | None, cluster: ClusterArg = None) -> ClusterSpec:
    """The cluster a run uses: the config's `cluster:` section, overridden by `cluster`.

    `cluster` may be a kind ("local" or "slurm"), a dict of ClusterSpec fields that
    replace the config's (CLI flags), or a whole ClusterSpec.
    """
    if isinstance(cluster, ClusterSpec):
        return cluster
    base = config.model_dump(exclude_unset=True) if config is not None else {}
    if cluster is None:
        update: dict[str, Any] = {}
    elif isinstance(cluster, str):
        update = {"kind": cluster}
    elif isinstance(cluster, dict):
        update = {k: v for k, v in cluster.items() if v is not None}
    else:
        raise ConfigError(
            f"cluster: expected 'local', 'slurm', a dict or a ClusterSpec, got {cluster!r}"
        )
    if "queue" in update:
        update["partition"] = update.pop("queue")
    if {"jobs"} & update.keys():
        base.pop("min_jobs", None)
        base.pop("max_jobs", None)
        base.pop("lifetime", None)  # adaptive only
    if {"min_jobs", "max_jobs"} & update.keys():
        base.pop("jobs", None)
    try:
        return ClusterSpec.model_validate({**base, **update})
    except ValueError as exc:
        raise ConfigError(f"cluster: {_first_error(exc)}") from None


@contextmanager
def connect(
    workers: int | None = None,
    scheduler: str | None = None,
    cluster: ClusterArg = None,
    config: ClusterSpec | None = None,
) -> Iterator[Client]:
    """A client for one run. `config` is the pipeline's `cluster:` section; `cluster`
    overrides it (see `resolve_cluster`)."""
    spec = resolve_cluster(config, cluster)
    if scheduler is not None:
        if cluster is not None and spec.kind == "slurm":
            raise ConfigError("--scheduler and --cluster slurm exclude each other")
        try:
            client = Client(scheduler, timeout="10s")
        except OSError as exc:
            raise EngineError(f"cannot reach the dask scheduler at {scheduler}: {exc}") from None
        with client:
            yield client
        return
    if spec.kind == "slurm":
        if workers is not None:
            raise ConfigError("--workers is for --cluster local; SLURM runs use --jobs")
        from engine.execute.slurm import slurm_client

        with slurm_client(spec) as client:
            yield client
        return
    n = workers or os.cpu_count() or 1
    if n < 1:
        raise EngineError(f"--workers must be at least 1, got {n}")
    with (
        LocalCluster(
            n_workers=n,
            threads_per_worker=1,
            processes=True,
            dashboard_address=":0",
            silence_logs=logging.CRITICAL,
        ) as cluster_,
        Client(cluster_) as client,
    ):
        yield client


def worker_memory(client: Client) -> tuple[int, int]:
    """The smallest worker memory limit (0: none) and the most threads on one worker."""
    workers = client.scheduler_info().get("workers", {}).values()
    limits = [int(w.get("memory_limit") or 0) for w in workers]
    threads = max((int(w.get("nthreads", 1)) for w in workers), default=1)
    return min((m for m in limits if m), default=0), threads
