"""The dask settings of every worker the engine starts (local and SLURM), from the worker
environment (engine/core/worker_env.py): what dask's nanny sets before it starts a
worker, no profiler, and forking local workers from the command's server."""

from __future__ import annotations

import shlex
from typing import Any

import dask

from engine.core.worker_env import (
    HEAP_ENVIRONMENT,
    WORKER_DASK_SETTINGS,
    ensure_worker_server,
    worker_server_environment,
)


def worker_config() -> dict[str, Any]:
    """dask settings for the workers the engine starts (a local cluster, SLURM jobs).

    - The environment dask's nanny sets before it starts a worker process (glibc reads
      MALLOC_* variables once, at start): dask's own, plus the engine's heap settings
      (HEAP_ENVIRONMENT in engine/core/worker_env.py). dask sets MALLOC_TRIM_THRESHOLD_ to 64 KiB
      so freed memory goes back to the OS at once; chunk tasks allocate and free arrays
      of tens of MiB, which then fault in again page by page. In the standard pipeline
      on 256x1024x1024 (2 workers):
      - keeping 64 MiB free at the top of each heap (MALLOC_TOP_PAD_) took system time
        from 21 s to 8 s of a 42 s run;
      - taking arrays up to 32 MiB from the heap instead of a fresh mmap each
        (MALLOC_MMAP_THRESHOLD_; it also stops at 128 KiB once the trim threshold is
        set) took it from 5.8 to 7.3 s down to 2.9 to 3.2 s, and page faults from 0.7
        million to 0.22 million.
    - No statistical profiler: it samples each worker's stacks every 10 ms, 2 s of CPU
      in that run (33.3 s of user time against 31.4 s without). The dashboard's task
      stream and progress remain; only its Profile page stays empty.
    """
    environ = dask.config.get("distributed.nanny.pre-spawn-environ", default={}) or {}
    return {
        "distributed.nanny.pre-spawn-environ": {**environ, **HEAP_ENVIRONMENT},
        **WORKER_DASK_SETTINGS,
    }


def start_method() -> dict[str, Any]:
    """Fork local workers from the server the command or the Python API started
    (engine/core/worker_env.py; started here if neither did) when it has the environment
    dask's settings ask for; else spawn them."""
    ensure_worker_server()
    wanted = worker_config()["distributed.nanny.pre-spawn-environ"]
    if worker_server_environment() != {k: str(v) for k, v in wanted.items()}:
        return {}
    import distributed.utils

    # dask would otherwise import every package it knows in this process, to preload
    # them in a server that is already running
    distributed.utils._forkserver_preload_set = True
    return {"distributed.worker.multiprocessing-method": "forkserver"}


def config_exports(config: dict[str, Any]) -> list[str]:
    """Shell lines that give a process started elsewhere (a SLURM job) these dask
    settings, as the environment variables dask reads at import."""
    lines = []
    for key, value in config.items():
        name = "DASK_" + "__".join(part.replace("-", "_").upper() for part in key.split("."))
        lines.append(f"export {name}={shlex.quote(repr(value))}")
    return lines
