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

Only this module, `engine/__init__.py` (which imports nothing until asked) and the
standard-library modules it names (engine/core/worker_env.py, engine/core/sizes.py,
engine/io/image_size.py) run before the server starts; keep their imports to the
standard library. A run that surely stays on threads of this process starts no server
(`runs_on_threads`).
"""

from __future__ import annotations

import logging
import os
import re
import signal
import sys
from collections.abc import Sequence

from engine.core.sizes import IN_PROCESS_MAX, size_bytes
from engine.core.worker_env import (
    start_worker_server,
    use_one_thread_libraries,
    worker_environment,
)
from engine.io.image_size import local_image_size

# bytes per voxel of what the common ops write (their `dtype` in tasks/; 0: the input's),
# so that a run's largest read is told from the input and the ops its config names
# (tests/test_cold_start.py checks them against tasks.OPS); any other op counts as
# READ_BYTES_PER_VOXEL, a float64 or uint64 array of the whole image (an op with more
# per voxel may be misjudged: its run then starts its workers without the server)
OP_OUTPUT_BYTES = {"gaussian": 4, "median": 0, "threshold": 1, "normalize": 4, "label": 4}
READ_BYTES_PER_VOXEL = 8
_OPS = re.compile(r"^[\s-]*op\s*:\s*['\"]?([^\s'\"#]+)", re.MULTILINE)
# a config that sets any of these may send a small run to worker processes: assume so
_CLUSTER_SETTINGS = re.compile(r"^\s*(cluster|in_process_max|dashboard)\s*:", re.MULTILINE)


def starts_local_workers(argv: Sequence[str]) -> bool:
    """Whether the command line asks for a run that may start a local cluster (a config
    may still choose SLURM; the server then idles until the command exits)."""
    words = list(argv)
    command = next((w for w in words if not w.startswith("-")), None)
    if command != "run" or any(w.startswith("--scheduler") for w in words):
        return False
    if goes_to_warm_engine(words):
        return False
    after = dict(zip(words, [*words[1:], ""], strict=True))
    return after.get("--cluster") != "slurm" and "--cluster=slurm" not in words


def runs_on_threads(argv: Sequence[str]) -> bool:
    """Whether a run surely goes to threads of this process (engine/execute/placement.py,
    `small_enough`), told from the command line, the config's text and the input's
    metadata files alone: its largest read is at most the input's voxels times the most
    bytes per voxel of the input and of what its ops write. Then no worker server is
    started. That server imports the workers' modules (1.2 s of CPU) on the other core
    while this process imports its own, and is killed unused once the run picks its
    threads: measured on the 64x256x256 sample with other load on the machine, the
    whole command took 2.9 s of CPU and 2.7 s of wall time with it against 1.7 s and
    1.8 s without.

    False whenever in doubt (no `--input`, a URL, a plate, a config with a `cluster:`
    section, --dashboard): the server starts as before. A run this wrongly calls small
    still runs, its cluster spawning workers the slower way."""
    words = list(argv)
    if "run" not in words or any(w.startswith("--dashboard") for w in words):
        return False
    after = dict(zip(words, [*words[1:], ""], strict=True))
    config = after["run"]
    image = after.get("--input") or next(
        (w.split("=", 1)[1] for w in words if w.startswith("--input=")), None
    )
    if not image or not config or config.startswith("-"):
        return False
    try:
        with open(config, encoding="utf-8") as file:
            text = file.read()
        limit = size_bytes(os.environ.get("NGFF_ENGINE_IN_PROCESS_MAX", IN_PROCESS_MAX))
    except (OSError, ValueError):  # the command itself says what is wrong
        return False
    found = local_image_size(image)
    if _CLUSTER_SETTINGS.search(text) or found is None:
        return False
    voxels, itemsize = found
    ops = _OPS.findall(text) or ["?"]
    per_voxel = max(itemsize, *(OP_OUTPUT_BYTES.get(op, READ_BYTES_PER_VOXEL) for op in ops))
    return voxels * per_voxel <= limit


def goes_to_warm_engine(words: Sequence[str]) -> bool:
    """Whether a run will use the warm engine (engine/execute/warm.py), whose workers are
    up: no worker server to start here (it would import the engine on the other core
    while this command does). With --workers the run may need a cluster of its own."""
    setting = os.environ.get("NGFF_ENGINE_WARM", "1").strip().lower()
    if setting in ("0", "no", "false") or "--no-warm" in words:
        return False
    return not any(w == "--workers" or w.startswith("--workers=") for w in words)


def _stop_during_start(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(signum)


# commands that read and print only: nothing of theirs waits for the interpreter's
# teardown, which took 0.33 s after `info` (anndata's and pandas' modules), 0.08 s after
# `validate` (0.01 s without it)
READ_ONLY_COMMANDS = ("info", "validate", "plan")


def main() -> int:
    """Run the command. After a run that started the worker server, ran on threads or
    used the warm engine, and after a command that only reads, the process ends without
    the interpreter's teardown (its modules and dask's and zarr's threads: 0.17 s after
    a run on threads, against 0.01 s; everything written and closed by then)."""
    signal.signal(signal.SIGTERM, _stop_during_start)  # commands.main takes over from here
    remote = sends_to_warm_engine(sys.argv[1:])
    if remote is not None:
        _exit(remote)
    words = sys.argv[1:]
    threads = starts_local_workers(words) and runs_on_threads(words)
    server = starts_local_workers(words) and not threads
    if server:
        start_worker_server(worker_environment())
    if threads:
        use_one_thread_libraries()
    command = next((w for w in words if not w.startswith("-")), None)
    warm = command == "run" and goes_to_warm_engine(words)
    try:
        from engine.cli.commands import main as run_command
    except KeyboardInterrupt as exc:  # a stop signal while the engine imports
        signum = exc.args[0] if exc.args else signal.SIGINT
        print("interrupted", file=sys.stderr)
        return 128 + int(signum)

    code = run_command()
    if not (server or warm or threads or command in READ_ONLY_COMMANDS):
        return code
    _exit(code)


def _exit(code: int) -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    logging.shutdown()
    os._exit(code)


def sends_to_warm_engine(words: Sequence[str]) -> int | None:
    """Run a run, plan, preview or diff in the warm engine's command server (engine/cli/
    remote.py) when one of this code runs: this process then imports nothing of the
    engine's libraries. Its exit code; None: run it here."""
    command = next((w for w in words if not w.startswith("-")), None)
    if command not in ("run", "plan", "preview", "diff") or not goes_to_warm_engine(words):
        return None
    if any(w.startswith(("--scheduler", "--cluster")) for w in words):
        return None
    from engine.cli.remote import send

    return send(words)
