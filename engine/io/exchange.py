"""Two directories swapped in one step: how an `--overwrite` puts its new output in place
of the old one (engine/runs/staging.py).

Linux's `renameat2(..., RENAME_EXCHANGE)` swaps two paths atomically: any reader opening
`labels/nuclei` sees either the whole old group or the whole new one, never a mix or a
gap. Python has no binding for it; glibc has had one since 2.28, called here through
ctypes. Where the call is missing or the file system refuses it (EINVAL: some network
file systems), two renames do the swap instead, and a reader opening the output between
them finds no group for that moment.
"""

from __future__ import annotations

import ctypes
import errno
import os
from pathlib import Path

AT_FDCWD = -100
RENAME_EXCHANGE = 2


def _renameat2() -> ctypes._CFuncPtr | None:  # type: ignore[name-defined]
    try:
        function = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return None
    function.argtypes = [
        ctypes.c_int,
        ctypes.c_char_p,
        ctypes.c_int,
        ctypes.c_char_p,
        ctypes.c_uint,
    ]
    function.restype = ctypes.c_int
    return function


def exchange_directories(a: str | Path, b: str | Path) -> bool:
    """Swap the directories at `a` and `b` (both must exist). True: in one atomic step;
    False: by two renames through a third name (no atomic exchange here)."""
    function = _renameat2()
    if function is not None:
        if function(AT_FDCWD, os.fsencode(a), AT_FDCWD, os.fsencode(b), RENAME_EXCHANGE) == 0:
            return True
        code = ctypes.get_errno()
        if code not in (errno.EINVAL, errno.ENOSYS):
            raise OSError(code, os.strerror(code), str(a), None, str(b))
    aside = Path(b).with_name(f"{Path(b).name}.exchange")
    os.rename(b, aside)
    os.rename(a, b)
    os.rename(aside, a)
    return False
