"""User segmenters for `op: instance` in tests (imported as `user_segmenters:NAME`).

Workers of a test's dask cluster import this module by name, as they do
user_functions (pytest puts tests/ on sys.path).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage


def components(block: np.ndarray, level: float = 0.0) -> np.ndarray:
    """Connected components above `level`: a stand-in for a model that finds objects."""
    labels, _ = ndimage.label(block > level)
    return labels


def float_labels(block: np.ndarray) -> np.ndarray:
    """Not instance labels: what a segmenter returning probabilities would give."""
    return block.astype(np.float32)
