"""The `ngff-engine` command's entry point: start the local workers' process server,
then import the engine.

A local cluster's worker is a new Python process that imports the engine (numpy,
scipy, zarr, dask: 1.4 s) before its first task, and the command itself imports the
same first. One after the other, that was 3 s of every run's wall time. Here a
multiprocessing fork server starts before anything else and imports the worker's
modules while the command imports its own, on the other core; the local cluster then
forks its workers from that server, ready, in milliseconds (engine/execute/cluster.py).
A run of one chunk through the standard pipeline took 4.0 s and takes 2.7 s.

The server's environment and what it preloads live in engine/core/worker_env.py.

Only this module and `engine/__init__.py` (which imports nothing until asked) run
before the server starts; keep their imports to the standard library.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
from collections.abc import Sequence

from engine.core.worker_env import start_worker_server, worker_environment


def starts_local_workers(argv: Sequence[str]) -> bool:
    """Whether the command line asks for a run that may start a local cluster (a config
    may still choose SLURM; the server then idles until the command exits)."""
    words = list(argv)
    command = next((w for w in words if not w.startswith("-")), None)
    if command != "run" or any(w.startswith("--scheduler") for w in words):
        return False
    after = dict(zip(words, [*words[1:], ""], strict=True))
    return after.get("--cluster") != "slurm" and "--cluster=slurm" not in words


def _stop_during_start(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(signum)


def main() -> int:
    """Run the command. After a run that started the worker server, the process ends
    without the interpreter's teardown (its modules and dask's and zarr's threads:
    0.3 s, with everything written and closed by then)."""
    signal.signal(signal.SIGTERM, _stop_during_start)  # commands.main takes over from here
    server = starts_local_workers(sys.argv[1:])
    if server:
        start_worker_server(worker_environment())
    try:
        from engine.cli.commands import main as run_command
    except KeyboardInterrupt as exc:  # a stop signal while the engine imports
        signum = exc.args[0] if exc.args else signal.SIGINT
        print("interrupted", file=sys.stderr)
        return 128 + int(signum)

    code = run_command()
    if not server:
        return code
    sys.stdout.flush()
    sys.stderr.flush()
    logging.shutdown()
    os._exit(code)
