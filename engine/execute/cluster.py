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
from distributed import Client, LocalCluster
from distributed.security import Security

from engine.core.errors import ConfigError, EngineError
from engine.core.pipeline import ClusterSpec
from engine.execute.occupancy import Occupancy, measured
from engine.execute.placement import ClusterArg, resolve_cluster, uses_warm
from engine.execute.worker_config import start_method, worker_config


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
    number of workers or for worker resources; else a LocalCluster of its own. (A run
    small enough for threads of the command's process never comes here:
    engine/execute/placement.py.)"""
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
