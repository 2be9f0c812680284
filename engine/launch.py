"""The `ngff-engine` command's entry point: start the local workers' process server,
then import the engine.

A local cluster's worker is a new Python process that imports the engine (numpy,
scipy, zarr, dask: 1.4 s) before its first task, and the command itself imports the
same first. One after the other, that was 3 s of every run's wall time. Here a
multiprocessing fork server starts before anything else and imports the worker's
modules while the command imports its own, on the other core; the local cluster then
forks its workers from that server, ready, in milliseconds (engine/execute/cluster.py).
A run of one chunk through the standard pipeline took 4.0 s and takes 2.7 s.

glibc reads its MALLOC_* settings once, when a process starts, so the server is
started with the environment the workers need (the same dask's nanny gives a worker
it spawns, plus the engine's heap pad); a cluster whose dask settings ask for another
environment spawns its workers as before.

Only this module and `engine/__init__.py` (which imports nothing until asked) run
before the server starts; keep their imports to the standard library.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import sys
from collections.abc import Sequence

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
# what dask's nanny sets before it spawns a worker (distributed.nanny.pre-spawn-environ)
DASK_WORKER_ENVIRONMENT = {
    "MALLOC_TRIM_THRESHOLD_": "65536",
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "OPENBLAS_NUM_THREADS": "1",
}
# what a worker imports to run chunk tasks, and the server's own exit (engine/fork_server.py)
WORKER_MODULES = ["distributed", "engine.execute.executor", "engine.fork_server"]

_server_environment: dict[str, str] | None = None


def worker_environment() -> dict[str, str]:
    return {**DASK_WORKER_ENVIRONMENT, **HEAP_ENVIRONMENT}


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


def worker_server_environment() -> dict[str, str] | None:
    """The environment the fork server was started with; None: no server."""
    return _server_environment


def starts_local_workers(argv: Sequence[str]) -> bool:
    """Whether the command line asks for a run that may start a local cluster (a config
    may still choose SLURM; the server then idles until the command exits)."""
    words = list(argv)
    command = next((w for w in words if not w.startswith("-")), None)
    if command != "run" or any(w.startswith("--scheduler") for w in words):
        return False
    after = dict(zip(words, [*words[1:], ""], strict=True))
    return after.get("--cluster") != "slurm" and "--cluster=slurm" not in words


def main() -> int:
    """Run the command. After a run that started the worker server, the process ends
    without the interpreter's teardown (its modules and dask's and zarr's threads:
    0.3 s, with everything written and closed by then)."""
    server = starts_local_workers(sys.argv[1:])
    if server:
        start_worker_server(worker_environment())
    from engine.cli import main as run_command

    code = run_command()
    if not server:
        return code
    sys.stdout.flush()
    sys.stderr.flush()
    logging.shutdown()
    os._exit(code)
