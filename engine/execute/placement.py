"""Which workers a run's tasks go to, decided without importing dask: the cluster a
config and the command ask for (`resolve_cluster`), whether the run is small enough for
threads of the command's own process (`small_enough`), whether a local run goes to the
warm engine (`uses_warm`); engine/execute/run_pool.py hands the executor its pool.

Importing dask.distributed costs 0.23 s after numpy, zarr and scipy (0.49 s alone), and
starting even an in-process scheduler and worker 0.7 to 1.0 s: more than the whole
computation of a small run. So this module, which every command imports, keeps dask out
until a run needs a cluster (engine/execute/cluster.py)."""

from __future__ import annotations

import os
from typing import Any

from engine.core.errors import ConfigError, EngineError
from engine.core.pipeline import ClusterSpec, _first_error
from engine.core.sizes import size_bytes
from engine.execute.pools import TaskPool
from engine.plan.types import Plan

ClusterArg = ClusterSpec | dict[str, Any] | str | None
DEFAULT_DASHBOARD = ClusterSpec.model_fields["dashboard"].default


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


def small_enough(spec: ClusterSpec, reads: int) -> bool:
    """Whether a run whose largest stage reads `reads` bytes runs on threads of the
    command's process (engine/execute/pools.py): at most NGFF_ENGINE_IN_PROCESS_MAX when
    set, else the config's `cluster.in_process_max`. Asked before the run writes
    anything, so that a bad setting is refused with nothing changed."""
    if spec.kind != "local" or spec.dashboard != DEFAULT_DASHBOARD:
        return False
    text = os.environ.get("NGFF_ENGINE_IN_PROCESS_MAX", spec.in_process_max)
    try:
        return reads <= size_bytes(text)
    except ValueError:
        raise ConfigError(
            f"NGFF_ENGINE_IN_PROCESS_MAX: '{text}' is not a size such as 32MiB or 0"
        ) from None


def uses_warm(
    warm: bool | None, workers: int | None, resources: dict[str, float] | None = None
) -> bool:
    """Whether a local run goes to the warm engine (see engine/execute/cluster.py)."""
    from engine.execute import warm as warm_engine

    wanted = warm_engine.enabled() if warm is None else warm
    same_size = workers is None or workers == warm_engine.default_workers()
    return wanted and same_size and not resources


def plan_resources(plan: Plan) -> dict[str, float]:
    """The worker resources a plan's stages need: the largest amount of each."""
    needed: dict[str, float] = {}
    for stage in plan.stages:
        for name, amount in stage.resources:
            needed[name] = max(needed.get(name, 0.0), amount)
    return needed


def check_resources(pool: TaskPool, plan: Plan) -> None:
    """Refuse a plan whose stages need worker resources no connected worker offers."""
    offered = pool.resources()
    for stage in plan.stages:
        needed = dict(stage.resources)
        if not needed or not offered:  # no workers yet (adaptive): they come as configured
            continue
        if not any(all(r.get(k, 0) >= v for k, v in needed.items()) for r in offered):
            have = sorted({f"{k}={v:g}" for r in offered for k, v in r.items()})
            raise EngineError(
                f"step '{stage.step}': needs worker resources "
                f"{', '.join(f'{k}={v:g}' for k, v in needed.items())} but no dask worker offers "
                f"them (workers offer: {', '.join(have) or 'none'}); start workers with "
                '`dask worker ... --resources "gpu=1"`, or let the engine start them'
            )
