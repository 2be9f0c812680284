"""How a pyramid level is made from the level below: integer factors from the levels'
scales, and the mean over blocks of those factors (labels take every f-th voxel instead,
so ids stay ids)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from engine.io.ngff_write import LevelSpec


def downsample_factors(lower: LevelSpec, upper: LevelSpec) -> tuple[int, ...]:
    """Integer factors between two pyramid levels, from their scales (1 where unchanged)."""
    return tuple(max(1, round(u / lo)) for lo, u in zip(lower.scale, upper.scale, strict=True))


def block_mean(data: np.ndarray, factors: Sequence[int]) -> np.ndarray:
    """Mean over blocks of `factors`; a partial block at the edge averages what it has."""
    out = data.astype(np.float64)
    for axis, f in enumerate(factors):
        if f == 1:
            continue
        starts = np.arange(0, out.shape[axis], f)
        counts = np.minimum(starts + f, out.shape[axis]) - starts
        shape = [1] * out.ndim
        shape[axis] = len(starts)
        out = np.add.reduceat(out, starts, axis=axis) / counts.reshape(shape)
    if np.issubdtype(data.dtype, np.integer) or data.dtype == np.bool_:
        return np.rint(out).astype(data.dtype)
    return out.astype(data.dtype)
