"""User functions for `op: function` in tests (imported as `user_functions:NAME`).

The workers of a test's dask cluster import this module by name, so it must stay
importable from tests/ (pytest puts that folder on sys.path; subprocesses get it
through PYTHONPATH).
"""

from __future__ import annotations

import numpy as np


def explode(block: np.ndarray) -> np.ndarray:
    """Fails on every block, as a buggy user function would."""
    raise ValueError(f"user function cannot handle a block of shape {block.shape}")


def identity(block: np.ndarray) -> np.ndarray:
    return block
