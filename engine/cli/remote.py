"""A command sent to the warm engine's command server (engine/cli/command_server.py)
instead of run here: the standard library only, so that the command's own start is
Python's and no more. Used by the entry point (engine/cli/entry.py) when a warm engine
of this engine's code runs; else the command runs here (and starts the engine)."""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
import time
from collections.abc import Sequence

from engine.execute import warm

SOCKET = "command.sock"  # as engine/cli/command_server.py
COMMANDS = ("run", "diff", "plan", "preview")
# seconds to wait for a command server that is still importing (1.3 s quiet), as long
# as running the command here would take
READY_WAIT = 10.0


def send(argv: Sequence[str]) -> int | None:
    """Run the command in the warm engine; its exit code, or None when no warm engine of
    this code runs or its server cannot be reached (run it here then)."""
    running = warm.find()
    if running is None or running.code != warm.code_stamp():
        return None
    path = warm.folder() / SOCKET
    deadline = time.monotonic() + READY_WAIT
    while not path.exists() and warm._alive(running.command_pid):  # still importing
        if time.monotonic() > deadline:
            return None
        time.sleep(0.02)
    connection = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        connection.connect(str(path))
        request = {"argv": list(argv), "cwd": os.getcwd(), "env": dict(os.environ)}
        socket.send_fds(connection, [json.dumps(request).encode() + b"\n"], [0, 1, 2])
    except OSError:
        connection.close()
        return None
    reader = connection.makefile("rb")
    child = None
    while True:
        try:
            line = reader.readline()
        except KeyboardInterrupt:  # Ctrl-C: to the child, which ends as a command does
            if child is not None:
                os.kill(child, signal.SIGINT)
            continue
        if not line:  # the child died without a word
            print("error: the warm engine's command ended unexpectedly", file=sys.stderr)
            return 1
        message = json.loads(line)
        if "pid" in message:
            child = int(message["pid"])
        if "exit" in message:
            return int(message["exit"])
