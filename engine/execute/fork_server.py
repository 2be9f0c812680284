"""Imported by the fork server that local workers come from, and nowhere else
(engine/cli/entry.py preloads it there).

When the command exits, the server sees its pipe close and would tear down every module
it imported: 0.25 s during which anything reading the command's output through a pipe
(`| tee`, a benchmark) waits for end of file. It exits at once instead. Its workers are
not affected: multiprocessing ends each forked child with os._exit, before atexit.

Ctrl-C in a terminal reaches every process of the command's group. The workers ignore
it (the server's handlers at the end of its preloads are the ones its children get):
the command stops the run and closes its cluster, which ends the workers; each worker
of a 2-worker run otherwise printed a `KeyboardInterrupt` traceback (about 70 lines).

The server also dies with the command: the kernel sends it SIGKILL when its parent
ends (PR_SET_PDEATHSIG), even a parent killed with SIGKILL during start-up, before the
server reads the pipe whose end of file it would otherwise wait for.
"""

import atexit
import ctypes
import os
import signal

PR_SET_PDEATHSIG = 1

atexit.register(os._exit, 0)
signal.signal(signal.SIGINT, signal.SIG_IGN)


def _die_with_parent() -> None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):  # not Linux: the pipe's end of file remains
        return
    if os.getppid() == 1:  # the command ended before the call: adopted by init
        os._exit(0)


_die_with_parent()
