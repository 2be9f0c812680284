"""Sizes as people and dask write them (`32MiB`, `500MB`, `4G`, `0`). Standard library
only: the command's entry point (engine/cli/entry.py) reads NGFF_ENGINE_IN_PROCESS_MAX
with it before it imports anything else."""

from __future__ import annotations

import re

# the default `cluster.in_process_max` (engine/core/pipeline.py says why)
IN_PROCESS_MAX = "256MiB"

_SIZE = re.compile(r"^(\d+(?:\.\d+)?)([kmgtp]i?)?b?$", re.IGNORECASE)


def size_bytes(text: str) -> int:
    """A size as dask writes them (`32MiB`, `500MB`, `4G`, `0`): k, M, G... are powers of
    1000, Ki, Mi, Gi... of 1024."""
    found = _SIZE.match(text.replace(" ", ""))
    if found is None:
        raise ValueError(f"'{text}' is not a size such as 32MiB or 0")
    number, unit = float(found[1]), (found[2] or "").lower()
    power = " kmgtp".index(unit[0]) if unit else 0
    return int(number * (1024 if unit.endswith("i") else 1000) ** power)
