"""Imported by the fork server that local workers come from, and nowhere else
(engine/core/worker_env.py preloads it there, for the command and the Python API).

When the command exits, the server sees its pipe close and would tear down every module
it imported: 0.25 s during which anything reading the command's output through a pipe
(`| tee`, a benchmark) waits for end of file. It exits at once instead. Its workers are
not affected: multiprocessing ends each forked child with os._exit, before atexit.

Workers do not import the caller's `__main__`. multiprocessing prepares each child the
way `spawn` does: it runs the parent's main script again as `__mp_main__` (from its
path, or its module name), so that functions defined there unpickle. A user's script
with no `if __name__ == "__main__":` guard then starts the whole run again in every
worker (dask's nanny fails to start: "output labels/nuclei is being written by run
..."), and a script read from stdin cannot be found (`'<stdin>'`). A worker needs
nothing from `__main__`: its tasks are engine functions, and anything else dask sends it
is pickled by value (cloudpickle), so the server's children skip that step.

Ctrl-C in a terminal reaches every process of the command's group. The workers ignore
it (the server's handlers at the end of its preloads are the ones its children get):
the command stops the run and closes its cluster, which ends the workers; each worker
of a 2-worker run otherwise printed a `KeyboardInterrupt` traceback (about 70 lines).

The server also dies with the command, within WATCH_SECONDS, even a command killed with
SIGKILL during start-up: it was left running (parent 1) while it imported the workers'
modules, before it reads the pipe whose end of file it otherwise waits for. This module
is the first it imports (WORKER_MODULES in engine/core/worker_env.py).
"""

import atexit
import multiprocessing.spawn
import os
import signal
import threading
import time

WATCH_SECONDS = 0.2  # how often the server looks for its parent

atexit.register(os._exit, 0)

_prepare = multiprocessing.spawn.prepare


def _prepare_without_main(data: dict) -> None:
    """multiprocessing's own preparation of a child, less re-running `__main__`."""
    _prepare(
        {k: v for k, v in data.items() if k not in ("init_main_from_name", "init_main_from_path")}
    )


multiprocessing.spawn.prepare = _prepare_without_main
signal.signal(signal.SIGINT, signal.SIG_IGN)  # the command stops the run; see above


def _die_with_parent(parent: int) -> None:
    """End this server (not its workers: they have dask's own watch) once `parent` is gone.

    A thread that polls, not PR_SET_PDEATHSIG: that signal follows the parent *thread*
    that started the server, and the Python API may start it from a thread that ends
    long before the process does."""
    while True:
        if os.getppid() != parent:
            os._exit(0)
        time.sleep(WATCH_SECONDS)


threading.Thread(target=_die_with_parent, args=(os.getppid(),), daemon=True).start()
