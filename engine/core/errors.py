"""User-facing errors: one line that names what is wrong and where.

Anything raised as an `EngineError` is the user's to fix (a config field, a path,
an ROI); the CLI prints its message alone and exits non-zero. Anything else is a
bug and keeps its traceback.
"""

from __future__ import annotations

import errno
import functools
import os
import re
from collections.abc import Callable
from contextvars import ContextVar
from typing import Any, TypeVar

F = TypeVar("F", bound=Callable[..., Any])


class EngineError(Exception):
    """A problem with the user's input, reported without a traceback."""


class ConfigError(EngineError):
    """The pipeline config (YAML or Python) is invalid."""


class NgffError(EngineError):
    """An image or output on disk is not what OME-Zarr requires."""


class OutputConflict(EngineError):
    """An output exists and the run was not allowed to change it."""


# The command's flags in messages, and what a Python caller writes instead. Messages are
# written once, for the command; the Python API (engine.run, engine.submit) raises them
# with these names, so a script is told `update=True`, not `--update`.
PYTHON_ARGUMENTS = {
    "--overwrite": "overwrite=True",
    "--update": "update=True",
    "--resume": "resume=True",
    "--roi": "roi=",
    "--priority-roi": "priority_roi=",
    "--input": "input=",
    "--workers": "workers=",
    "--scheduler": "scheduler=",
    "--cluster slurm": 'cluster="slurm"',
    "--cluster local": 'cluster="local"',
    "--cluster": "cluster=",
    "--jobs": 'cluster={"jobs": N}',
    "--min-jobs": 'cluster={"min_jobs": N}',
    "--max-jobs": 'cluster={"max_jobs": N}',
    "--lifetime": 'cluster={"lifetime": ...}',
    "--partition": 'cluster={"partition": ...}',
    "--shared-dir": 'cluster={"shared_directory": ...}',
}
_FLAG = re.compile(
    "|".join(re.escape(f) for f in sorted(PYTHON_ARGUMENTS, key=len, reverse=True)) + r"(?![\w-])"
)
# set while the command runs (engine/cli/commands.py): messages keep the command's flags
COMMAND_LINE: ContextVar[bool] = ContextVar("command_line", default=False)


def python_arguments(message: str) -> str:
    """`message` with the command's flags named as the Python API's arguments."""
    return _FLAG.sub(lambda m: PYTHON_ARGUMENTS[m.group(0)], message)


def in_python_terms(function: F) -> F:
    """Raise `function`'s EngineErrors with Python argument names, unless the command runs."""

    @functools.wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return function(*args, **kwargs)
        except EngineError as exc:
            if not COMMAND_LINE.get() and exc.args and isinstance(exc.args[0], str):
                exc.args = (python_arguments(exc.args[0]), *exc.args[1:])
            raise

    return wrapper  # type: ignore[return-value]


class Interrupted(KeyboardInterrupt):
    """The command got SIGINT (Ctrl-C) or SIGTERM (`kill`, SLURM): the run stops, is
    recorded as `killed`, and `--resume` continues it. `run_id` is set by the run it
    stopped, for the message."""

    def __init__(self, signum: int, run_id: str | None = None) -> None:
        super().__init__(signum)
        self.signum = signum
        self.run_id = run_id


def os_error_message(exc: OSError) -> str | None:
    """One line for an OSError the user can act on (no space, a read-only or forbidden
    place), naming the path; None for any other."""
    where = exc.filename or "?"
    if exc.errno == errno.ENOSPC:
        return f"no space left on device writing {where}: free some space, or write elsewhere"
    if exc.errno == errno.EROFS:
        return (
            f"{where}: read-only file system: the image is not writable, and a run writes "
            "its outputs and run state (_engine/) inside it; copy the image to a writable "
            "place, or make it writable"
        )
    if exc.errno in (errno.EACCES, errno.EPERM):
        return (
            f"{where}: permission denied: the image is not writable by this user, and a run "
            "writes its outputs and run state (_engine/) inside it; copy the image to a "
            "writable place, or ask its owner for write permission"
        )
    return None


def disk_full(exc: OSError, path: str) -> bool:
    """Whether a failed write to `path` ran out of space: ENOSPC, or a short write
    (numpy's `tofile` says only '... requested and 0 written') where none is left."""
    if exc.errno == errno.ENOSPC:
        return True
    if exc.errno is not None:
        return False
    try:
        stat = os.statvfs(os.path.dirname(path) or ".")
    except OSError:
        return False
    return stat.f_bavail * stat.f_frsize < 1024 * 1024


class NoSpace(EngineError):
    """A write found the device full."""

    def __init__(self, path: str) -> None:
        super().__init__(
            f"no space left on device writing {path}: free some space, or write elsewhere"
        )
        self.path = path

    def __reduce__(self) -> tuple[object, ...]:
        return (NoSpace, (self.path,))
