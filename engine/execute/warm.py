"""The warm engine: one local dask scheduler with its workers per user, started on first
use and reused by every later command and API call, so that the Adjust-Test-Evaluate
loop's small runs pay no cluster start and no worker imports.

It runs detached (its own session: a Ctrl-C in the terminal that started it does not
reach it), listens on 127.0.0.1 only and speaks TLS with a certificate of its own
(dask's `Security.temporary()`, engine/execute/tls.py). Its address, certificate and
key live in a private folder (`~/.ngff-engine/engine/`, mode 0700; the key 0600;
`NGFF_ENGINE_WARM_DIR` moves it), so only its user can reach it.

It stops by itself after an idle time (no client connected and no task: default 10
minutes; `NGFF_ENGINE_IDLE_TIMEOUT` or `--idle-timeout`, re-read while it runs), and on
`ngff-engine stop`. An engine started from other engine code (another checkout, an
edited file, another Python) is not reused: it is stopped and a new one started, so a
run never computes with stale code.

Standard library only at import: `ngff-engine status` and `stop` import this and
nothing of dask. The server itself is `python -m engine.execute.warm_server`.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.core.errors import EngineError

IDLE_TIMEOUT = 600.0  # seconds without a client or a task before the engine stops
START_TIMEOUT = 180.0  # seconds for the engine to come up (workers import the engine)
STOP_TIMEOUT = 30.0  # seconds for a graceful stop before its processes are killed
POLL = 0.25  # seconds between the server's looks at its scheduler

INFO = "engine.json"  # address, pid, workers, code stamp; written once it is ready
STATE = "state.json"  # busy or idle, and since when; written on each change
TIMEOUT_FILE = "idle-timeout"  # the idle time, changed while it runs


ENGINE_ROOT = Path(__file__).resolve().parents[2]  # the folder `engine` is imported from


def _tasks_root() -> Path:
    spec = importlib.util.find_spec("tasks")
    assert spec is not None and spec.origin is not None
    return Path(spec.origin).parent


def folder() -> Path:
    """The engine's private folder, created with mode 0700."""
    base = os.environ.get("NGFF_ENGINE_WARM_DIR")
    path = Path(base) if base else Path.home() / ".ngff-engine" / "engine"
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(path, 0o700)
    return path


def enabled() -> bool:
    """Whether local runs use the warm engine by default (NGFF_ENGINE_WARM=0: no)."""
    return os.environ.get("NGFF_ENGINE_WARM", "1").strip().lower() not in ("0", "no", "false")


def default_workers() -> int:
    return os.cpu_count() or 1


def idle_timeout_default() -> float:
    text = os.environ.get("NGFF_ENGINE_IDLE_TIMEOUT")
    try:
        return float(text) if text else IDLE_TIMEOUT
    except ValueError:
        raise EngineError(
            f"NGFF_ENGINE_IDLE_TIMEOUT: '{text}' is not a number of seconds"
        ) from None


def code_stamp() -> str:
    """What the engine's code is: the Python, where `engine` and `tasks` are, and the
    newest modification of their modules (a few ms: about 140 files)."""
    newest, count = 0, 0
    roots = [ENGINE_ROOT / "engine", _tasks_root()]
    for root in roots:
        for directory, _, files in os.walk(root):
            for name in files:
                if name.endswith(".py"):
                    newest = max(newest, os.stat(os.path.join(directory, name)).st_mtime_ns)
                    count += 1
    return f"{sys.executable}|{'|'.join(map(str, roots))}|{count}|{newest}"


@dataclass(frozen=True)
class WarmEngine:
    address: str
    pid: int
    workers: int
    started: str
    code: str
    worker_pids: tuple[int, ...] = ()
    command_pid: int = 0  # the command server (engine/cli/command_server.py), 0: none yet

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> WarmEngine:
        return cls(
            data["address"],
            int(data["pid"]),
            int(data["workers"]),
            data["started"],
            data["code"],
            tuple(data.get("worker_pids", ())),
            int(data.get("command_pid", 0)),
        )


def _alive(pid: int) -> bool:
    """Whether a process runs (a zombie, exited but not yet reaped, does not)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        try:
            os.kill(pid, 0)
        except OSError:
            return False
        return True


def find() -> WarmEngine | None:
    """The running warm engine, whatever its code; None: none runs."""
    try:
        data = json.loads((folder() / INFO).read_text())
        engine = WarmEngine.from_json(data)
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return engine if _alive(engine.pid) else None


def state() -> dict[str, Any]:
    """{"busy": bool, "since": ISO time, "clients": n, "idle_timeout": s} of the engine."""
    try:
        data = json.loads((folder() / STATE).read_text())
    except (OSError, ValueError):
        data = {}
    data["idle_timeout"] = _read_timeout(folder(), None)
    return data


def set_idle_timeout(seconds: float) -> None:
    """The idle time of the engine running now and of the next one started."""
    if seconds <= 0:
        raise EngineError(f"--idle-timeout must be more than 0 seconds, got {seconds:g}")
    _write_private(folder() / TIMEOUT_FILE, f"{seconds:g}\n")


def _read_timeout(where: Path, default: float | None) -> float | None:
    try:
        return float((where / TIMEOUT_FILE).read_text())
    except (OSError, ValueError):
        return default


def _write_private(path: Path, text: str) -> None:
    """Write a file only its user reads, atomically."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(temporary, path)


@contextlib.contextmanager
def _start_lock() -> Iterator[None]:
    """One command at a time starts or stops the engine."""
    with open(folder() / "start.lock", "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def ensure(workers: int | None = None, idle_timeout: float | None = None, wait: bool = True):
    """The warm engine of `workers` workers with this engine code: the running one, or a
    new one (an engine of other code or size is stopped first). `wait=False` starts it
    without waiting (`plan` and `preview` do, for the run that follows) and returns None."""
    workers = workers or default_workers()
    if idle_timeout is not None:
        set_idle_timeout(idle_timeout)
    code = code_stamp()
    with _start_lock():
        running = find()
        if running is not None and running.code == code and running.workers == workers:
            return running
        if running is None and not wait and _starting():
            return None
        if running is not None:
            _stop(running)
        process = _spawn(workers)
        if not wait:
            return None
        return _wait_ready(process)


def _starting() -> bool:
    """Whether an engine process was started and is still coming up."""
    try:
        pid = int((folder() / "starting.pid").read_text())
    except (OSError, ValueError):
        return False
    return _alive(pid)


_children: list[subprocess.Popen] = []  # engines this process started, to reap them


def _spawn(workers: int) -> subprocess.Popen:
    where = folder()
    for name in (INFO, STATE):
        (where / name).unlink(missing_ok=True)
    timeout = _read_timeout(where, None) or idle_timeout_default()
    env = dict(os.environ)
    paths = [str(ENGINE_ROOT), *filter(None, [env.get("PYTHONPATH")])]
    env["PYTHONPATH"] = os.pathsep.join(paths)
    log = open(where / "engine.log", "ab")  # noqa: SIM115 (the child keeps it)
    with log:
        process = subprocess.Popen(
            [sys.executable, "-m", "engine.execute.warm_server", str(workers), f"{timeout:g}"],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            cwd=str(where),
            env=env,
            start_new_session=True,
        )
    _write_private(where / "starting.pid", f"{process.pid}\n")
    _children.append(process)
    return process


def _wait_ready(process: subprocess.Popen) -> WarmEngine:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        engine = find()
        if engine is not None and engine.pid == process.pid:
            return engine
        if process.poll() is not None:
            break
        time.sleep(0.05)
    else:
        _kill_group(process.pid)
    log = (folder() / "engine.log").read_text(errors="replace").strip().splitlines()[-3:]
    raise EngineError(
        f"the warm engine did not start (see {folder() / 'engine.log'}: {' / '.join(log)}); "
        "run with --no-warm to start a cluster for this run only"
    )


def stop() -> WarmEngine | None:
    """Stop the warm engine and every process of it; the one stopped, None: none ran."""
    with _start_lock():
        running = find()
        if running is not None:
            _stop(running)
        return running


def _stop(running: WarmEngine) -> None:
    """SIGTERM (the server closes its cluster), then SIGKILL to what is left of its
    process group (its workers are in it), then its files go."""
    with contextlib.suppress(OSError):
        os.kill(running.pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_TIMEOUT
    while _alive(running.pid) and time.monotonic() < deadline:
        _reap()
        time.sleep(0.05)
    _kill_group(running.pid)
    for pid in running.worker_pids:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
    _reap()
    for name in (INFO, STATE):
        (folder() / name).unlink(missing_ok=True)


def _kill_group(pid: int) -> None:
    """SIGKILL every process of the group `pid` leads, and wait until they are gone."""
    with contextlib.suppress(OSError):
        os.killpg(pid, signal.SIGKILL)
    deadline = time.monotonic() + 5.0
    while _group(pid) and time.monotonic() < deadline:
        _reap()
        time.sleep(0.02)


def _group(pgid: int) -> list[int]:
    """The live processes of a process group (from /proc: no psutil to import)."""
    members = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            members.append(int(entry))
    return members


def _reap() -> None:
    for process in list(_children):
        if process.poll() is not None:
            _children.remove(process)


def import_client() -> None:
    """Import what a client of the engine needs (the command server does, once)."""
    import distributed  # noqa: F401
    import distributed.security  # noqa: F401


def security(where: Path | None = None):
    """The dask Security a client of the engine uses (its certificate)."""
    from distributed.security import Security

    from engine.execute.tls import TLS_FILES

    where = where or folder()
    return Security(
        tls_ca_file=str(where / TLS_FILES["ca"]),
        tls_client_cert=str(where / TLS_FILES["cert"]),
        tls_client_key=str(where / TLS_FILES["key"]),
        require_encryption=True,
    )


@contextlib.contextmanager
def client(workers: int | None = None, idle_timeout: float | None = None) -> Iterator[Any]:
    """A dask client of the warm engine, started if none runs. An engine that went away
    between finding and connecting is started again once."""
    from distributed import Client

    for attempt in range(2):
        engine = ensure(workers, idle_timeout)
        try:
            connected = Client(engine.address, security=security(), timeout="10s")
        except OSError:
            if attempt:
                raise
            stop()
            continue
        with connected:
            yield connected
        return


def describe() -> dict[str, Any] | None:
    """What `ngff-engine status` shows: address, workers, pid, started, busy or idle."""
    engine = find()
    if engine is None:
        return None
    return {
        "address": engine.address,
        "pid": engine.pid,
        "workers": engine.workers,
        "worker_pids": list(engine.worker_pids),
        "started": engine.started,
        "folder": str(folder()),
        **state(),
    }


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
