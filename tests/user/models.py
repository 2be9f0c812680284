"""Model factories for `op: model` in tests (named `user.models:NAME`).

Each factory stands for a user's model loader: it is called once per worker process with
the step's kwargs and returns the callable applied to each chunk plus its halo.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from scipy import ndimage


def _note_load(log: str | None) -> None:
    """One file per call of a factory, named by the process, so tests can count loads."""
    if log is not None:
        (Path(log) / f"{os.getpid()}-{uuid.uuid4().hex}").touch()


def contrast(size: int = 5, gain: float = 1.0, log: str | None = None) -> Callable:
    """A 'model' that looks size // 2 voxels around each voxel: gain * (max - min)."""
    _note_load(log)

    def predict(block: np.ndarray) -> np.ndarray:
        spread = ndimage.maximum_filter(block, size) - ndimage.minimum_filter(block, size)
        return (spread * gain).astype(np.float32)

    return predict


def contrast_kept(size: int = 5, gain: float = 1.0, log: str | None = None) -> Callable:
    """The same, computed on the part of the block the engine keeps only (`keep`)."""
    _note_load(log)
    whole = contrast(size, gain)

    def predict(block: np.ndarray, keep: Sequence[slice] | None = None) -> np.ndarray:
        out = whole(block)
        return out if keep is None else out[tuple(keep)]

    return predict


def wrong_shape() -> Callable:
    """A model whose output lost the halo it was given without being asked to."""
    return lambda block: block[1:-1, 1:-1, 1:-1]
