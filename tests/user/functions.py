"""User functions for `op: function` in tests (named `user.functions:NAME`)."""

from __future__ import annotations

import os
import time
import uuid
from pathlib import Path

import numpy as np


def explode(block: np.ndarray) -> np.ndarray:
    """Fails on every block, as a buggy user function would."""
    raise ValueError(f"user function cannot handle a block of shape {block.shape}")


def identity(block: np.ndarray) -> np.ndarray:
    return block


def slow_identity(
    block: np.ndarray, delay: float = 0.0, trace: str = "", hold: str = ""
) -> np.ndarray:
    """For the SLURM fault tests: the image unchanged, slowly. Each call leaves
    `<job>-<n>.start` and, if it finishes, `.end` in `trace`; with `hold`, it also waits
    until that file exists (the test makes it when it saw what it waits for)."""
    mark = Path(trace) / f"{os.environ.get('SLURM_JOB_ID', 'local')}-{uuid.uuid4().hex}"
    if trace:
        mark.with_suffix(".start").touch()
    time.sleep(delay)
    while hold and not Path(hold).exists():
        time.sleep(0.1)
    if trace:
        mark.with_suffix(".end").touch()
    return block
