"""Foreground masks by a fixed value or by Otsu's method over the ROI.

Otsu needs the whole ROI, so it is a two-pass reduction: pass 0 finds the
ROI's min and max, pass 1 builds the histogram over that range. The histogram
is binned exactly as scikit-image bins it (256 equal bins over [min, max] for
floats, one bin per value for integers), so the threshold equals
``skimage.filters.threshold_otsu`` on the whole ROI, whatever the chunking.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
from pydantic import Field, model_validator
from skimage.filters import threshold_otsu

from tasks.spec import Context, OpSpec, Params, Reduction

MAX_INTEGER_BINS = 1 << 24


class ThresholdParams(Params):
    method: Literal["value", "otsu"]
    value: float | None = None
    nbins: int = Field(default=256, ge=2)

    @model_validator(mode="after")
    def _value_matches_method(self) -> ThresholdParams:
        if self.method == "value" and self.value is None:
            raise ValueError("method 'value' needs a 'value'")
        if self.method != "value" and self.value is not None:
            raise ValueError(f"'value' is only for method 'value', not '{self.method}'")
        return self


def _min_max(block: np.ndarray, params: ThresholdParams, pass_no: int, prev: Any):
    if block.size == 0:
        return None
    return (block.min(), block.max())


def _histogram(block: np.ndarray, params: ThresholdParams, pass_no: int, prev: Any):
    lo, hi = prev
    if np.issubdtype(block.dtype, np.integer):
        shifted = (block.astype(np.int64, copy=False) - int(lo)).ravel()
        return np.bincount(shifted, minlength=int(hi) - int(lo) + 1)
    return np.histogram(block, bins=params.nbins, range=(lo, hi))[0]


def _map(block: np.ndarray, params: ThresholdParams, pass_no: int, prev: Any):
    if pass_no == 0:
        return _min_max(block, params, pass_no, prev)
    if prev[0] == prev[1]:
        return None
    return _histogram(block, params, pass_no, prev)


def _combine(a: Any, b: Any) -> Any:
    if a is None:
        return b
    if b is None:
        return a
    if isinstance(a, tuple):
        return (min(a[0], b[0]), max(a[1], b[1]))
    return a + b


def _finish(combined: Any, params: ThresholdParams, pass_no: int, prev: Any) -> Any:
    if pass_no == 0:
        if combined is None:
            raise ValueError("the ROI is empty: nothing to compute a threshold from")
        lo, hi = combined
        if (
            np.issubdtype(np.asarray(lo).dtype, np.integer)
            and int(hi) - int(lo) >= MAX_INTEGER_BINS
        ):
            raise ValueError(f"integer range {lo}..{hi} is too wide for an exact histogram")
        return combined
    lo, hi = prev
    if lo == hi:
        return lo
    if np.issubdtype(np.asarray(lo).dtype, np.integer):
        centers = np.arange(int(lo), int(hi) + 1)
    else:
        edges = np.histogram_bin_edges(np.asarray([lo, hi]), bins=params.nbins, range=(lo, hi))
        centers = (edges[:-1] + edges[1:]) / 2.0
    return threshold_otsu(hist=(combined, centers))


OTSU = Reduction(passes=2, map=_map, combine=_combine, finish=_finish)


def threshold(block: np.ndarray, params: ThresholdParams, ctx: Context, value: Any = None):
    cut = params.value if params.method == "value" else value
    return block > cut


THRESHOLD = OpSpec(
    name="threshold",
    version="1",
    params=ThresholdParams,
    kind=lambda p: "blockwise" if p.method == "value" else "reduction",
    halo=lambda p, ctx: (0,) * len(ctx.spacing),
    dtype=lambda p, dtype: np.dtype(bool),
    apply=threshold,
    reduction=lambda p: OTSU if p.method == "otsu" else None,
    doc="Foreground mask: voxels strictly above a value or above Otsu's threshold over the ROI.",
)
