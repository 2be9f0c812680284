"""User functions for `op: function` in tests (named `user.ops:NAME`)."""

import numpy as np
from scipy import ndimage


def local_range(block: np.ndarray, size: int = 3) -> np.ndarray:
    """Max minus min over a box: needs a halo of size // 2."""
    return ndimage.maximum_filter(block, size) - ndimage.minimum_filter(block, size)


def fails(block: np.ndarray) -> np.ndarray:
    raise ValueError("this function always fails")


def fail_on_value(block: np.ndarray, value: int, unless: str | None = None) -> np.ndarray:
    """The identity, except that it fails on a block holding `value` (one chunk of a test
    image), unless the file `unless` exists (the user "fixed" it)."""
    import os

    if (block == value).any() and (unless is None or not os.path.exists(unless)):
        raise ValueError(f"bad voxel value {value} in this block")
    return block


def flaky(block: np.ndarray, flags: str) -> np.ndarray:
    """The identity, but fails the first time it sees a block (files in `flags` remember
    which blocks it saw): retries must get every chunk through."""
    import hashlib
    from pathlib import Path

    seen = Path(flags) / hashlib.sha1(block.tobytes()).hexdigest()
    try:
        seen.touch(exist_ok=False)
    except FileExistsError:
        return block
    raise RuntimeError("transient failure")
