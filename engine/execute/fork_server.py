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
"""

import atexit
import multiprocessing.spawn
import os

atexit.register(os._exit, 0)

_prepare = multiprocessing.spawn.prepare


def _prepare_without_main(data: dict) -> None:
    """multiprocessing's own preparation of a child, less re-running `__main__`."""
    _prepare(
        {k: v for k, v in data.items() if k not in ("init_main_from_name", "init_main_from_path")}
    )


multiprocessing.spawn.prepare = _prepare_without_main
