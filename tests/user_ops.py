"""User functions for the `function` op in tests (importable by dask workers)."""

import numpy as np
from scipy import ndimage


def local_range(block: np.ndarray, size: int = 3) -> np.ndarray:
    """Max minus min over a box: needs a halo of size // 2."""
    return ndimage.maximum_filter(block, size) - ndimage.minimum_filter(block, size)


def fails(block: np.ndarray) -> np.ndarray:
    raise ValueError("this function always fails")
