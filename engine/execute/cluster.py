"""Getting a dask client: a LocalCluster the engine starts, an existing scheduler, or
dask workers in SLURM jobs (engine/execute/slurm.py). `connect` is the one entry point.

Worker resources (a model step's `resources: {gpu: 1}`): workers the engine starts are
given the resources the plan asks for (a local cluster's workers claim them, SLURM worker
jobs request them with `--gres`); on an existing scheduler `check_resources` makes sure
some worker offers them, since dask would otherwise wait for such a worker forever."""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from typing import Any

import dask
from dask.utils import parse_bytes
from distributed import Client, LocalCluster, Scheduler, SpecCluster, Worker
from distributed.security import Security

from engine.core.errors import ConfigError, EngineError
from engine.core.pipeline import ClusterSpec, _first_error
from engine.core.worker_env import WORKER_DASK_SETTINGS
from engine.execute.occupancy import Occupancy, measured
from engine.execute.worker_config import start_method, worker_config
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


def dashboard_address(address: str) -> str:
    """Where the dashboard listens: a bare port (`:8787`, `8787`) is on 127.0.0.1, not on
    every interface as dask would bind it; give `0.0.0.0:8787` to share it on purpose."""
    text = address.strip()
    if text.startswith(":"):
        return f"127.0.0.1{text}"
    if text.isdigit():
        return f"127.0.0.1:{text}"
    return text


@contextmanager
def connect(
    workers: int | None = None,
    scheduler: str | None = None,
    cluster: ClusterArg = None,
    config: ClusterSpec | None = None,
    resources: dict[str, float] | None = None,
    warm: bool | None = None,
    idle_timeout: float | None = None,
    in_process: bool = False,
) -> Iterator[Client]:
    """A client for one run. `config` is the pipeline's `cluster:` section; `cluster`
    overrides it (see `resolve_cluster`). Workers the engine starts offer `resources`.

    A local cluster listens on 127.0.0.1 only, and with `tls` (the default) scheduler,
    workers and client talk TLS with a certificate made for this run
    (`Security.temporary()`, held in memory and handed to the workers in their start
    arguments): any user of a shared machine can reach 127.0.0.1, and dask's scheduler
    runs whatever a connected client sends (`client.run`), so a client without the
    run's certificate must be refused. Its dashboard is on 127.0.0.1 unless
    `cluster.dashboard` (`--dashboard ADDRESS`) says otherwise.

    A local run uses the warm engine (engine/execute/warm.py; started on first use) when
    `warm` is True, or None and NGFF_ENGINE_WARM is not 0, unless it asks for another
    number of workers or for worker resources; else a LocalCluster of its own, or with
    `in_process` (`small_enough`) one inside this process (`in_process_client`)."""
    spec = resolve_cluster(config, cluster)
    if scheduler is not None:
        if cluster is not None and spec.kind == "slurm":
            raise ConfigError("--scheduler and --cluster slurm exclude each other")
        try:
            # not the process's default client: runs on a shared scheduler may be made in
            # threads (engine/runs/units.py), and a default client set from a thread stays
            # in dask's global config after it closes ("no Client active" for the
            # caller's own dask code, e.g. ngio's)
            security = _SHARED.get(scheduler)  # a shared_scheduler's TLS certificate
            client = Client(scheduler, timeout="10s", set_as_default=False, security=security)
        except OSError as exc:
            raise EngineError(f"cannot reach the dask scheduler at {scheduler}: {exc}") from None
        with client:
            yield client
        return
    if spec.kind == "slurm":
        if workers is not None:
            raise ConfigError("--workers is for --cluster local; SLURM runs use --jobs")
        from engine.execute.slurm import slurm_client

        with slurm_client(spec, resources) as client:
            yield client
        return
    n = workers or os.cpu_count() or 1
    if n < 1:
        raise EngineError(f"--workers must be at least 1, got {n}")
    if uses_warm(warm, workers, resources):
        from engine.execute.warm import client as warm_client

        with warm_client(n, idle_timeout) as client:
            yield client
        return
    if in_process and not resources:
        with in_process_client(n) as client:
            yield client
        return
    security = Security.temporary() if spec.tls else None
    with (
        dask.config.set(worker_config()),
        dask.config.set(start_method()),
        LocalCluster(
            n_workers=n,
            threads_per_worker=1,
            processes=True,
            host="127.0.0.1",
            dashboard_address=dashboard_address(spec.dashboard),
            security=security,
            protocol="tls://" if security is not None else "tcp://",
            silence_logs=logging.CRITICAL,
            resources=resources or None,
        ) as cluster_,
        Client(cluster_) as client,
    ):
        yield client


def small_enough(spec: ClusterSpec, reads: int) -> bool:
    """Whether a run whose largest stage reads `reads` bytes runs in the command's
    process (`in_process_client`): at most NGFF_ENGINE_IN_PROCESS_MAX when set, else the
    config's `cluster.in_process_max`. Asked before the run writes anything, so that a
    bad setting is refused with nothing changed."""
    if spec.kind != "local" or spec.dashboard != DEFAULT_DASHBOARD:
        return False
    text = os.environ.get("NGFF_ENGINE_IN_PROCESS_MAX", spec.in_process_max)
    try:
        return reads <= parse_bytes(text.replace(" ", ""))
    except ValueError:
        raise ConfigError(
            f"NGFF_ENGINE_IN_PROCESS_MAX: '{text}' is not a size such as 32MiB or 0"
        ) from None


@contextmanager
def in_process_client(threads: int) -> Iterator[Client]:
    """A dask scheduler and one worker of `threads` threads inside this process, for a
    run too small to pay for worker processes: starting two local worker processes
    takes 1.5 to 2.5 s (forked from the command's server, their modules imported), this
    takes 0.05 to 0.1 s. On 64x256x256 (the standard pipeline, 0.35 s of CPU) the
    command took 3.6 s from start to exit with worker processes.

    Scheduler, worker and client talk through in-process queues (dask's inproc://), so
    there is no scheduler port to secure with TLS. dask still starts an HTTP server in
    the scheduler and in the worker (LocalCluster binds both to every interface when the
    transport is inproc); here they listen on 127.0.0.1 and serve nothing. A run asking
    for a dashboard (`cluster.dashboard`) is not run here (`small_enough`)."""
    loopback = "127.0.0.1:0"
    with (
        dask.config.set(
            {
                **WORKER_DASK_SETTINGS,
                "distributed.scheduler.http.routes": [],
                "distributed.worker.http.routes": [],
            }
        ),
        SpecCluster(
            scheduler={
                "cls": Scheduler,
                "options": {
                    "protocol": "inproc://",
                    "dashboard": False,
                    "dashboard_address": loopback,
                },
            },
            workers={
                0: {
                    "cls": Worker,
                    "options": {
                        "protocol": "inproc://",
                        "nthreads": threads,
                        "dashboard": False,
                        "dashboard_address": loopback,
                    },
                }
            },
            silence_logs=logging.CRITICAL,
        ) as cluster_,
        Client(cluster_, set_as_default=False) as client,
    ):
        yield client


class Connecting:
    """`connect(...)` in a thread of its own, started at once, so the cluster starts (the
    scheduler, its workers' start and handshakes, their TLS certificate: about a second
    here, most of it waiting) while the driver goes on with what does not need it (an
    import checks its source's files); `with` it for the client, which waits for the
    start. The thread that entered `connect` leaves it too (dask's client keeps a
    context variable that only its own thread may reset): `close()`, or the end of the
    `with`, tells it to and waits. An error from the start is raised where the client is
    asked for.

    SLURM workers are asked for in the caller's thread, when the client is asked for, as
    `connect` does (dask-jobqueue sets signal handlers, which only the main thread may)."""

    def __init__(
        self, workers: int | None = None, scheduler: str | None = None, cluster: ClusterArg = None
    ) -> None:
        self._args = (workers, scheduler, cluster)
        self._client: Client | None = None
        self._error: BaseException | None = None
        self._ready = threading.Event()
        self._leave = threading.Event()
        self._stack = ExitStack()
        self._thread: threading.Thread | None = None
        if scheduler is None and resolve_cluster(None, cluster).kind == "slurm":
            return
        self._thread = threading.Thread(
            target=self._hold, args=self._args, name="connecting", daemon=True
        )
        self._thread.start()

    def _hold(self, *args: Any, **kwargs: Any) -> None:
        try:
            with connect(*args, **kwargs) as client:
                self._client = client
                self._ready.set()
                self._leave.wait()
        except BaseException as exc:  # raised by client() or close()
            self._error = exc
        finally:
            self._ready.set()

    def client(self) -> Client:
        if self._thread is None:
            if self._client is None:
                self._client = self._stack.enter_context(connect(*self._args))
            return self._client
        self._ready.wait()
        if self._error is not None:
            raise self._error
        assert self._client is not None
        return self._client

    def close(self) -> None:
        if self._thread is None:
            self._stack.close()
            return
        self._leave.set()
        self._thread.join()

    def __enter__(self) -> Client:
        try:
            return self.client()
        except BaseException:
            self.close()
            raise

    def __exit__(self, kind: Any, *exc: Any) -> None:
        if self._thread is None:
            self._stack.__exit__(kind, *exc)
            return
        self.close()
        if kind is None and self._error is not None:
            raise self._error


@contextmanager
def shared_scheduler(
    workers: int | None = None,
    scheduler: str | None = None,
    cluster: ClusterArg = None,
    config: ClusterSpec | None = None,
    warm: bool | None = None,
    idle_timeout: float | None = None,
    occupancy: Occupancy | None = None,
) -> Iterator[str]:
    """The address of one cluster for several runs (the images of a plate, the ROIs of a
    table): `scheduler` itself when given, else workers started once, as `connect` starts
    them, for as long as the block lasts. Each run then connects to it (a client costs
    tens of milliseconds; starting 2 local workers takes seconds). `occupancy` is filled
    with how busy the workers were while the block ran (engine/execute/occupancy.py)."""
    if scheduler is not None:
        if occupancy is None:
            yield scheduler
            return
        with connect(None, scheduler) as client, measured(client, occupancy):
            yield scheduler
        return
    with connect(workers, None, cluster, config, None, warm, idle_timeout) as client:
        address = client.scheduler.address
        # the runs connect by address: with TLS (a LocalCluster's temporary certificate,
        # the warm engine's) they need the certificate this client has
        _SHARED[address] = client.security
        try:
            with measured(client, occupancy):
                yield address
        finally:
            _SHARED.pop(address, None)


# address -> Security of the clusters `shared_scheduler` holds open in this process
_SHARED: dict[str, Security] = {}


def uses_warm(
    warm: bool | None, workers: int | None, resources: dict[str, float] | None = None
) -> bool:
    """Whether a local run goes to the warm engine (see `connect`)."""
    from engine.execute import warm as warm_engine

    wanted = warm_engine.enabled() if warm is None else warm
    same_size = workers is None or workers == warm_engine.default_workers()
    return wanted and same_size and not resources


def worker_memory(client: Client) -> tuple[int, int]:
    """The smallest worker memory limit (0: none) and the most threads on one worker."""
    workers = client.scheduler_info().get("workers", {}).values()
    limits = [int(w.get("memory_limit") or 0) for w in workers]
    threads = max((int(w.get("nthreads", 1)) for w in workers), default=1)
    return min((m for m in limits if m), default=0), threads


def plan_resources(plan: Plan) -> dict[str, float]:
    """The worker resources a plan's stages need: the largest amount of each."""
    needed: dict[str, float] = {}
    for stage in plan.stages:
        for name, amount in stage.resources:
            needed[name] = max(needed.get(name, 0.0), amount)
    return needed


def check_resources(client: Client, plan: Plan) -> None:
    """Refuse a plan whose stages need worker resources no connected worker offers."""
    offered = [w.get("resources", {}) for w in client.scheduler_info()["workers"].values()]
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
