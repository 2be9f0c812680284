"""The warm engine's own process (engine/execute/warm.py): a dask LocalCluster on
127.0.0.1 with TLS, its workers with the engine imported, and a watchdog that stops it
all after an idle time or on SIGTERM (`ngff-engine stop`)."""

from __future__ import annotations

import importlib
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from engine.core.worker_env import WORKER_MODULES
from engine.execute import warm


def preload() -> int:
    """On each worker, once: import what chunk tasks run (1.4 s cold; the modules local
    workers get from the fork server), so the first run on a new engine does not pay it
    either."""
    for module in WORKER_MODULES[1:]:
        importlib.import_module(module)
    return os.getpid()


def start_command_server(where: Path) -> subprocess.Popen:
    """The server that runs commands sent by the command line (engine/cli/remote.py), in
    this process group: stopped with the engine. A new program (fork and exec): none of
    this process's threads are in it."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
    env["MKL_NUM_THREADS"] = "1"
    return subprocess.Popen(
        [sys.executable, "-m", "engine.cli.command_server", str(where)],
        stdin=subprocess.DEVNULL,
        env=env,
    )


def serve(workers: int, idle_timeout: float, where: Path) -> int:
    """Workers fork from a server that imports their modules while this process imports
    its own (engine/core/worker_env.py, as the command does for a cluster of its own);
    the command server starts once the cluster is up, not to take CPU from it (the first
    command, which started the engine, runs here-side: it does not need it)."""
    from engine.core.worker_env import start_worker_server, worker_environment

    start_worker_server(worker_environment())
    import dask
    from distributed import Client, LocalCluster
    from distributed.security import Security

    from engine.execute.tls import tls_config, write_certificates
    from engine.execute.worker_config import start_method, worker_config

    stopping = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    signal.signal(signal.SIGINT, lambda *_: stopping.set())
    write_certificates(where)
    os.chmod(where / "tls-cert.pem", 0o600)
    dask.config.set({**tls_config(where), **worker_config()})
    dask.config.set(start_method())
    security = Security()  # from the settings above
    cluster = LocalCluster(
        n_workers=workers,
        threads_per_worker=1,
        processes=True,
        host="127.0.0.1",
        protocol="tls",
        security=security,
        dashboard_address=None,
        silence_logs=logging.CRITICAL,
    )
    commands = None
    try:
        with Client(cluster, security=security) as client:
            pids = sorted(client.run(preload).values())
        commands = start_command_server(where)  # it binds its socket once it is ready
        info = {
            "address": cluster.scheduler_address,
            "pid": os.getpid(),
            "workers": workers,
            "worker_pids": pids,
            "command_pid": commands.pid,
            "started": warm._now(),
            "code": warm.code_stamp(),
        }
        if warm._read_timeout(where, None) is None:
            warm._write_private(where / warm.TIMEOUT_FILE, f"{idle_timeout:g}\n")
        warm._write_private(where / warm.INFO, json.dumps(info) + "\n")
        (where / "starting.pid").unlink(missing_ok=True)
        watch(cluster.scheduler, where, idle_timeout, stopping)
    finally:
        if commands is not None:
            commands.terminate()
        cluster.close(timeout=warm.STOP_TIMEOUT)
        for name in (warm.INFO, warm.STATE):
            path = where / name
            if path.exists() and _written_by_me(path):
                path.unlink(missing_ok=True)
    return 0


def _written_by_me(path: Path) -> bool:
    try:
        return json.loads(path.read_text()).get("pid", os.getpid()) == os.getpid()
    except (OSError, ValueError):
        return True


def watch(scheduler, where: Path, idle_timeout: float, stopping: threading.Event) -> None:
    """Until SIGTERM or the idle time passes: note when the engine turns busy (a client
    connected or a task known) or idle, in state.json, for `status`."""
    busy, since = None, time.time()
    while not stopping.wait(warm.POLL):
        clients = sum(1 for c in list(scheduler.clients) if c != "fire-and-forget")
        now_busy = bool(clients or scheduler.tasks)
        if now_busy != busy:
            busy, since = now_busy, time.time()
            state = {"busy": busy, "since": warm._now(), "clients": clients, "pid": os.getpid()}
            warm._write_private(where / warm.STATE, json.dumps(state) + "\n")
        timeout = warm._read_timeout(where, idle_timeout) or idle_timeout
        if not busy and time.time() - since >= timeout:
            return


if __name__ == "__main__":
    sys.exit(serve(int(sys.argv[1]), float(sys.argv[2]), warm.folder()))
