"""How the command stops: on SIGINT (Ctrl-C) and SIGTERM (`kill`, SLURM's scancel and
time limit) alike, with one line and exit 128 + the signal (130, 143).

SIGTERM used to end the command at once (exit -15, no message, the run left `running`);
a Ctrl-C to the terminal's process group printed about 70 lines of worker
`KeyboardInterrupt` tracebacks. Now both raise `Interrupted` in the main thread: the run
records itself `killed` and closes its cluster (the workers ignore SIGINT, see
engine/execute/fork_server.py), and the command prints `interrupted: run ... can be
continued with --resume`.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from typing import Any

from engine.cli.render import console
from engine.core.errors import Interrupted

# after a stop signal, the command ends within this many seconds whatever it is doing
STOP_GRACE_SECONDS = 30.0


class signals_stop_the_command:
    """Within it, SIGINT and SIGTERM raise `Interrupted` in the main thread.

    A second signal, or a stop that takes longer than STOP_GRACE_SECONDS (a cluster that
    does not close), ends the process at once: a stop signal always stops. Only in the
    main thread (Python delivers signals there); the previous handlers come back after."""

    def __enter__(self) -> None:
        self.saved: dict[int, Any] = {}
        self.timer: threading.Timer | None = None
        if threading.current_thread() is not threading.main_thread():
            return
        for signum in (signal.SIGINT, signal.SIGTERM):
            self.saved[signum] = signal.signal(signum, self._first)

    def __exit__(self, *exc: object) -> None:
        if self.timer is not None:
            self.timer.cancel()
        for signum, handler in self.saved.items():
            signal.signal(signum, handler)

    def _first(self, signum: int, frame: Any) -> None:
        for other in self.saved:
            signal.signal(other, self._again)
        self.timer = threading.Timer(STOP_GRACE_SECONDS, self._again, (signum, None))
        self.timer.daemon = True
        self.timer.start()
        raise Interrupted(signum)

    @staticmethod
    def _again(signum: int, frame: Any) -> None:
        interrupted(Interrupted(signum))
        sys.stderr.flush()
        os._exit(128 + signum)


def interrupted(exc: KeyboardInterrupt) -> int:
    """One line for a stopped command; its exit code (128 + the signal)."""
    signum = getattr(exc, "signum", signal.SIGINT)
    run_id = getattr(exc, "run_id", None)
    if run_id:
        text = f"interrupted: run {run_id} can be continued with --resume"
    else:
        text = "interrupted"
    console.print(f"[bold red]{text}[/]", highlight=False, soft_wrap=True)
    return 128 + int(signum)


ROI_FLAGS = ("--roi", "--priority-roi")


def joined_roi_values(argv: list[str]) -> list[str]:
    """`--roi -5:10,...` as `--roi=-5:10,...`: argparse takes a value starting with '-'
    for an option and prints its usage; this way the ROI parser says what is wrong."""
    joined: list[str] = []
    i = 0
    while i < len(argv):
        value = argv[i + 1] if i + 1 < len(argv) else ""
        if argv[i] in ROI_FLAGS and value.startswith("-") and ":" in value:
            joined.append(f"{argv[i]}={value}")
            i += 2
            continue
        joined.append(argv[i])
        i += 1
    return joined
