"""The environment of the workers the engine starts: heap settings, no profiler, and the
fork server local workers come from.

One owner for what planning (the memory projection counts the heap pad), the local and
SLURM clusters (engine/execute/cluster.py) and the command's entry point
(engine/cli/entry.py) share. Standard library only: the entry point imports this
before anything else, to start the fork server while the command imports the engine.

glibc reads its MALLOC_* settings once, when a process starts, so the server is
started with the environment the workers need (the same dask's nanny gives a worker
it spawns, plus the engine's heap pad); a cluster whose dask settings ask for another
environment spawns its workers as before.
"""

from __future__ import annotations

import contextlib
import ctypes
import multiprocessing
import multiprocessing.forkserver
import os
import signal

# glibc keeps this much free at the top of each heap of a worker (MALLOC_TOP_PAD_), so
# the next task reuses memory instead of faulting it in; see worker_config() in
# engine/execute/cluster.py
HEAP_TOP_PAD_BYTES = 64 * 1024**2
# arrays up to this size come from the heap, not from a fresh mmap each (glibc's most)
HEAP_MMAP_THRESHOLD_BYTES = 32 * 1024**2
HEAP_ENVIRONMENT = {
    "MALLOC_TOP_PAD_": str(HEAP_TOP_PAD_BYTES),
    "MALLOC_MMAP_THRESHOLD_": str(HEAP_MMAP_THRESHOLD_BYTES),
}
# dask settings for every worker the engine starts: no statistical profiler (it samples
# each worker's stacks every 10 ms: 2 s of CPU in the standard pipeline, 33.3 s of user
# time against 31.4 s without); the dashboard's task stream and progress remain
WORKER_DASK_SETTINGS = {"distributed.worker.profile.enabled": False}
# what dask's nanny sets before it spawns a worker (distributed.nanny.pre-spawn-environ)
DASK_WORKER_ENVIRONMENT = {
    "MALLOC_TRIM_THRESHOLD_": "65536",
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "OPENBLAS_NUM_THREADS": "1",
}
# what the fork server imports: first its own settings (engine/execute/fork_server.py: exit
# with the command, even during these imports; workers ignore Ctrl-C), then a worker's,
# with the scipy and scikit-image code of the common ops (tasks/backends.py)
WORKER_MODULES = [
    "engine.execute.fork_server",
    "distributed",
    "engine.execute.executor",
    "tasks.backends",
]

_server_environment: dict[str, str] | None = None


def worker_environment() -> dict[str, str]:
    return {**DASK_WORKER_ENVIRONMENT, **HEAP_ENVIRONMENT}


# glibc's mallopt parameters for the MALLOC_* settings above (malloc.h)
_MALLOPT = {"MALLOC_TRIM_THRESHOLD_": -1, "MALLOC_TOP_PAD_": -2, "MALLOC_MMAP_THRESHOLD_": -3}


def use_one_thread_libraries() -> None:
    """For a run whose tasks go to this process's threads, before numpy is imported: the
    numerical libraries' own threads off, as for a worker (DASK_WORKER_ENVIRONMENT),
    unless the user set them. OpenBLAS starts a thread per core when it loads (numpy
    and scipy each bring one) and those spin, waiting for work that never comes, on the
    cores the tasks need: a cold run of the 64x256x256 sample took 0.85 to 1.14 s of CPU
    with OPENBLAS_NUM_THREADS=1 against 1.12 to 1.19 s without (3 runs each, in turn);
    in a profile of the time series, OpenBLAS's thread loops were 3.9% of the samples."""
    for name, value in DASK_WORKER_ENVIRONMENT.items():
        if name.endswith("_NUM_THREADS"):
            os.environ.setdefault(name, value)


def use_worker_heap() -> None:
    """Give this process the workers' heap settings now, for a run whose tasks go to its
    own threads (engine/execute/pools.py): the environment is read only when a process
    starts, so they are set through glibc's mallopt. Each task's arrays then reuse the
    heap instead of fresh pages: a run of the 4x64x512x512 time series took 46 to 47
    thousand page faults instead of 52 to 78 thousand (5 runs each, in turn), and 0.5 to
    0.7 s of system time instead of 0.65 to 1.5 s with the same settings given in the
    environment. Nothing where glibc is not the C library."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return
    for name, value in worker_environment().items():
        if name in _MALLOPT:
            mallopt(_MALLOPT[name], int(value))


def start_worker_server(environment: dict[str, str]) -> None:
    """Start the fork server local workers come from, importing WORKER_MODULES in the
    background, with `environment` added to this process's for it."""
    global _server_environment
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(WORKER_MODULES)
    saved = {name: os.environ.get(name) for name in environment}
    os.environ.update(environment)
    try:
        multiprocessing.forkserver.ensure_running()
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name)
            else:
                os.environ[name] = value
    _server_environment = dict(environment)


def ensure_worker_server() -> bool:
    """Start the fork server for the Python API (`engine.run`, `engine.submit`) unless
    one runs; whether local workers can come from it.

    The API starts it on first use, so that it imports the workers' modules while the
    caller imports the engine, as the command does (engine/cli/entry.py). Not in a
    process multiprocessing started (a worker), nor when another fork server runs in
    this process (its children would not have the workers' environment).
    """
    if _server_environment is not None:
        return True
    if multiprocessing.parent_process() is not None:
        return False
    if getattr(multiprocessing.forkserver._forkserver, "_forkserver_pid", None) is not None:
        return False
    start_worker_server(worker_environment())
    return True


def worker_server_environment() -> dict[str, str] | None:
    """The environment the fork server was started with; None: no server."""
    return _server_environment


def stop_worker_server() -> None:
    """Stop the fork server when the run turned out not to need worker processes (a
    small run on threads of this process, engine/execute/pools.py): it imports the
    workers' modules (1.3 s of CPU) on the other core, free while the command imports
    its own, but then it would take that core from the run's second thread. Killed, not
    asked: it reads its pipe only once its imports are done."""
    global _server_environment
    server = multiprocessing.forkserver._forkserver
    pid = getattr(server, "_forkserver_pid", None)
    if _server_environment is None or pid is None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    server._stop()  # reaps it and forgets it: a later cluster starts another
    _server_environment = None
