"""The warm engine's command server: a process with the command's modules imported that
runs each `ngff-engine` command sent to it in a child forked for it, so that a command
in the loop pays neither its imports (1.3 s on a quiet machine, 7 s with the 2 cores
loaded) nor a cluster start.

The command line (engine/cli/remote.py) sends its arguments, working folder,
environment and its standard input, output and error (the file descriptors themselves,
over a Unix socket in the engine's private folder): the child writes straight to the
user's terminal, and sends back its pid (for Ctrl-C) and its exit code.

The server never starts a thread nor touches zarr or dask before it forks: a child of a
process with threads would inherit their locks but not the threads.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import sys
from pathlib import Path

SOCKET = "command.sock"


def serve(where: Path) -> int:
    import engine.cli.commands  # noqa: F401  (what every command imports, once)
    from engine.execute.warm import import_client

    import_client()

    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # children are reaped by the kernel
    path = where / SOCKET
    path.unlink(missing_ok=True)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o177)
    try:
        listener.bind(str(path))
    finally:
        os.umask(old)
    listener.listen(16)
    while True:
        connection, _ = listener.accept()
        try:
            if os.fork() == 0:
                listener.close()
                _child(connection)  # never returns
        except OSError:
            pass
        connection.close()


def _receive(connection: socket.socket) -> tuple[dict, list[int]]:
    data, fds, _, _ = socket.recv_fds(connection, 1 << 20, 3)
    while not data.endswith(b"\n"):
        more = connection.recv(1 << 20)
        if not more:
            break
        data += more
    return json.loads(data), fds


def _child(connection: socket.socket) -> None:
    code = 1
    try:
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        os.setsid()  # the user's command: not stopped with the engine's process group
        request, fds = _receive(connection)
        for target, fd in zip((0, 1, 2), fds, strict=False):
            os.dup2(fd, target)
            os.close(fd)
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        sys.argv = ["ngff-engine", *request["argv"]]
        connection.sendall(json.dumps({"pid": os.getpid()}).encode() + b"\n")
        from engine.cli.commands import main

        code = main(request["argv"])
    except SystemExit as exc:  # argparse: --help, bad flags
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
    except BaseException as exc:  # noqa: BLE001 (the user sees it; the server lives on)
        print(f"internal error: {type(exc).__name__}: {exc}", file=sys.stderr)
    finally:
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        with contextlib.suppress(OSError):
            connection.sendall(json.dumps({"exit": code}).encode() + b"\n")
        os._exit(code)


if __name__ == "__main__":
    sys.exit(serve(Path(sys.argv[1])))
