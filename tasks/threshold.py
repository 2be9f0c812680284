"""Foreground masks by a fixed value, or by a value computed over the whole ROI.

Methods other than `value` are reductions (map per block, combine, finish); the
result is the same whatever the chunking:

- `otsu`: two passes. Pass 0 finds the ROI's min and max, pass 1 builds the histogram
  over that range, binned as scikit-image bins it (256 equal bins over [min, max] for
  floats, one per value for integers): ``skimage.filters.threshold_otsu``'s value.
- `li`: three passes (min/max, histogram, exact window), see the Li section. Integers:
  equal to ``skimage.filters.threshold_li`` on the whole ROI, bit for bit. Floats: the
  exact float64 fixed point of Li's update, within ~1e-6 to 2e-5 of the data range of
  scikit-image's float32 value (measured; see the Li section).
- `percentile`: three passes, see `PERCENTILE`. Equal to ``numpy.percentile`` (linear
  interpolation) on the whole ROI for every dtype.

The same percentile machinery gives the `normalize` op (percentile normalisation).
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
from pydantic import Field, model_validator

from tasks.spec import Context, OpSpec, Params, Reduction

try:
    from tasks import _histogram as _histogram_c  # tasks/_histogram.c, when compiled
except ImportError:  # an install without a C compiler: numpy, the same counts
    _histogram_c = None

MAX_INTEGER_BINS = 1 << 24


LI_FLOAT_BINS = 1 << 14
LI_WINDOW = 2
LI_WINDOW_VOXELS = 256
PERCENTILE_BINS = 1 << 14


class ThresholdParams(Params):
    method: Literal["value", "otsu", "li", "percentile"]
    value: float | None = None
    percentile: float | None = Field(default=None, ge=0, le=100)
    nbins: int = Field(default=256, ge=2)

    @model_validator(mode="after")
    def _value_matches_method(self) -> ThresholdParams:
        if self.method == "value" and self.value is None:
            raise ValueError("method 'value' needs a 'value'")
        if self.method != "value" and self.value is not None:
            raise ValueError(f"'value' is only for method 'value', not '{self.method}'")
        if self.method == "percentile" and self.percentile is None:
            raise ValueError("method 'percentile' needs a 'percentile' (0 to 100)")
        if self.method != "percentile" and self.percentile is not None:
            raise ValueError(f"'percentile' is only for method 'percentile', not '{self.method}'")
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
    return float_histogram(block, params.nbins, lo, hi)


def float_histogram(block: np.ndarray, bins: int, lo: Any, hi: Any) -> np.ndarray:
    """`np.histogram(block, bins, range=(lo, hi))[0]`, the same counts. For float32 data
    and range (a smoothed image's) the compiled count (tasks/_histogram.c) takes 6 ms
    where numpy takes 16 ms on a smoothed 32x256x256 block (median of 7): numpy
    estimates each bin, corrects it against the edges, and makes five temporaries on the
    way."""
    float32 = all(np.asarray(x).dtype == np.float32 for x in (block, lo, hi))
    if _histogram_c is None or not float32 or not lo < hi:
        return np.histogram(block, bins=bins, range=(lo, hi))[0]
    edges = np.histogram_bin_edges(block, bins=bins, range=(lo, hi))
    counts = np.zeros(bins, np.int64)
    _histogram_c.histogram(np.ascontiguousarray(block), edges, counts)
    return counts


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
    return otsu_from_histogram(combined, centers)  # numpy: no module loaded (OpSpec.loads)


def otsu_from_histogram(counts: np.ndarray, centers: np.ndarray) -> Any:
    """`skimage.filters.threshold_otsu(hist=(counts, centers))` (0.26), the same steps
    and value, without its import, which loads scipy.ndimage: 0.25 s holding the GIL
    in a run whose ops need no scipy (a small sample's whole run is 0.4 s)."""
    if counts[0] == 0 or counts[-1] == 0:
        present = counts > 0
        start = np.argmax(present)
        end = present.size - np.argmax(present[::-1])
        counts, centers = counts[start:end], centers[start:end]
    counts = counts.astype("float32", copy=False)
    weight1 = np.cumsum(counts)
    weight2 = np.cumsum(counts[::-1])[::-1]
    mean1 = np.cumsum(counts * centers) / weight1
    mean2 = (np.cumsum((counts * centers)[::-1]) / weight2[::-1])[::-1]
    variance12 = weight1[:-1] * weight2[1:] * (mean1[:-1] - mean2[1:]) ** 2
    return centers[np.argmax(variance12)]


OTSU = Reduction(passes=2, map=_map, combine=_combine, finish=_finish)


# --- Li ------------------------------------------------------------------------------------
#
# Integers: pass 1 is the exact histogram (one bin per value) and the value replays
# scikit-image's own integer arithmetic: bit-identical. Floats: pass 1 is a histogram
# of LI_FLOAT_BINS equal bins over [min, max] with the exact per-bin sums, Li's
# iteration on it gives an estimate (`li_from_binned`); pass 2 collects the distinct
# values (with counts) of the bins around the estimate (at least LI_WINDOW bins and
# LI_WINDOW_VOXELS voxels on each side), and Li's
# iteration is finished exactly on them in float64 (`li_refined`), giving the exact
# float64 fixed point of Li's update. scikit-image computes its means in float32 and
# stops at a tolerance, so on floats the two differ slightly. Measured: on 2,400 samples
# of 5,000 values (tests/test_ops_thresholds.py draws from the same kinds) at most 7e-7 of
# the data range, identical masks; on 120 volumes of 32,000 voxels at most 2.3e-5 of the
# range (4 voxels on the other side), where scikit-image stopped short of the fixed point,
# and once two fixed points one voxel apart, where the engine's iteration (started from
# the binned estimate, not the mean) settled on the other one.


def _li_bins(block: np.ndarray, lo: Any, hi: Any) -> tuple[np.ndarray, np.ndarray]:
    """Values minus min, in float64, and their bin among LI_FLOAT_BINS over [0, hi - lo]."""
    shifted = block.astype(np.float64).ravel() - float(lo)
    scale = LI_FLOAT_BINS / (float(hi) - float(lo))
    return shifted, np.minimum((shifted * scale).astype(np.int64), LI_FLOAT_BINS - 1)


def _li_map(block: np.ndarray, params: Any, pass_no: int, prev: Any):
    if pass_no == 0:
        return _min_max(block, params, pass_no, prev)
    lo, hi = prev["range"] if isinstance(prev, dict) else prev
    if lo == hi or (pass_no == 2 and "window" not in prev):
        return None
    if pass_no == 1 and np.issubdtype(block.dtype, np.integer):
        return _histogram(block, params, pass_no, (lo, hi))
    shifted, index = _li_bins(block, lo, hi)
    if pass_no == 1:
        counts = np.bincount(index, minlength=LI_FLOAT_BINS)
        sums = np.bincount(index, weights=shifted, minlength=LI_FLOAT_BINS)
        return {"counts": counts, "sums": sums}
    first, last = prev["window"]
    inside = shifted[(index >= first) & (index <= last)]
    values, counts = np.unique(inside, return_counts=True)
    return {"window": (values, counts)}


def _li_combine(a: Any, b: Any) -> Any:
    if isinstance(a, dict) and isinstance(b, dict):
        if "window" in a:
            return {"window": _merge_counts(a["window"], b["window"])}
        return {k: a[k] + b[k] for k in a}
    return _combine(a, b)


def li_from_histogram(hist: np.ndarray, lo: Any) -> float:
    """Li's threshold from the exact histogram of integer data (one bin per value lo..).

    The same arithmetic as ``skimage.filters.threshold_li`` on integer images: initial
    guess the mean, tolerance 0.5, histogram counts as float32, so the value is bit-identical
    to it on the whole ROI (as long as the sum of the ROI's values stays below 2**53).
    """
    centers = np.arange(len(hist))
    n = int(hist.sum())
    t_next = float(int(np.dot(hist.astype(np.int64), centers))) / n
    counts = hist.astype(np.float32, copy=False)
    tolerance = 0.5
    t_curr = -2 * tolerance
    while abs(t_next - t_curr) > tolerance:
        t_curr = t_next
        foreground = centers > t_curr
        background = ~foreground
        mean_fore = np.average(centers[foreground], weights=counts[foreground])
        mean_back = np.average(centers[background], weights=counts[background])
        if mean_back == 0:
            break
        t_next = (mean_back - mean_fore) / (np.log(mean_back) - np.log(mean_fore))
    return t_next + lo


def li_from_binned(counts: np.ndarray, sums: np.ndarray, max_iter: int = 10_000) -> float:
    """Li's threshold (min subtracted) from per-bin counts and exact per-bin sums.

    Foreground and background means are exact except for the bin the threshold falls in,
    which goes to the side of its own mean; stops when the split repeats.
    """
    n = counts.sum()
    nonempty = counts > 0
    means = np.where(nonempty, sums / np.maximum(counts, 1), -np.inf)
    t_next = float(sums.sum() / n)
    previous = None
    for _ in range(max_iter):
        foreground = nonempty & (means > t_next)
        background = nonempty & ~foreground
        if previous is not None and np.array_equal(foreground, previous):
            break
        previous = foreground
        n_fore, n_back = counts[foreground].sum(), counts[background].sum()
        if n_fore == 0 or n_back == 0:
            break
        mean_fore = sums[foreground].sum() / n_fore
        mean_back = sums[background].sum() / n_back
        if mean_back == 0:
            break
        t_next = float((mean_back - mean_fore) / (np.log(mean_back) - np.log(mean_fore)))
    return t_next


def li_refined(prev: dict, values: np.ndarray, counts: np.ndarray, max_iter: int = 1000) -> float:
    """Li's iteration finished exactly (float64) from the binned estimate, on the window's
    distinct values plus the exact count and sum of the bins below and above it, until
    the split repeats (then the update is a fixed point).

    Returns the estimate if the iteration would leave the window (where the split is
    exact only by bins)."""
    estimate = prev["estimate"]
    if len(values) < 2:
        return estimate
    n_below, s_below = prev["below"]
    n_above, s_above = prev["above"]
    cum_n = np.concatenate([[0], np.cumsum(counts)])
    cum_s = np.concatenate([[0.0], np.cumsum(values * counts)])
    t_next, previous = estimate, -1
    for _ in range(max_iter):
        if not values[0] <= t_next < values[-1]:
            return estimate
        k = int(np.searchsorted(values, t_next, side="right"))  # values[:k] <= t: background
        if k == previous:  # same split, same update: the fixed point
            return t_next
        previous = k
        mean_back = (s_below + cum_s[k]) / (n_below + cum_n[k])
        mean_fore = (s_above + cum_s[-1] - cum_s[k]) / (n_above + cum_n[-1] - cum_n[k])
        if mean_back == 0:
            return t_next
        t_next = float((mean_back - mean_fore) / (np.log(mean_back) - np.log(mean_fore)))
    return t_next


def _li_window(counts: np.ndarray, k: int) -> tuple[int, int]:
    """Bins around bin k: at least LI_WINDOW on each side and LI_WINDOW_VOXELS voxels below
    and above k (sparse data), so the exact iteration stays inside."""
    below = np.cumsum(counts[:k][::-1])
    above = np.cumsum(counts[k + 1 :])
    down = int(np.searchsorted(below, LI_WINDOW_VOXELS)) + 1 if len(below) else 0
    up = int(np.searchsorted(above, LI_WINDOW_VOXELS)) + 1 if len(above) else 0
    first = max(k - max(down, LI_WINDOW), 0)
    last = min(k + max(up, LI_WINDOW), len(counts) - 1)
    return first, last


def _li_finish(combined: Any, params: Any, pass_no: int, prev: Any) -> Any:
    if pass_no == 0:
        return {"range": _finish(combined, params, pass_no, prev)}
    lo, hi = prev["range"]
    if lo == hi:
        return {**prev, "value": lo}
    if pass_no == 1 and not isinstance(combined, dict):
        return {**prev, "value": li_from_histogram(combined, lo)}
    if pass_no == 1:
        counts, sums = combined["counts"], combined["sums"]
        estimate = li_from_binned(counts, sums)
        scale = LI_FLOAT_BINS / (float(hi) - float(lo))
        k = min(int(estimate * scale), LI_FLOAT_BINS - 1)
        first, last = _li_window(counts, k)
        return {
            **prev,
            "value": estimate + float(lo),
            "estimate": estimate,
            "window": (first, last),
            "below": (int(counts[:first].sum()), float(sums[:first].sum())),
            "above": (int(counts[last + 1 :].sum()), float(sums[last + 1 :].sum())),
        }
    if "window" not in prev or combined is None:
        return prev
    return {**prev, "value": li_refined(prev, *combined["window"]) + float(lo)}


LI = Reduction(passes=3, map=_li_map, combine=_li_combine, finish=_li_finish)


# --- Percentiles ---------------------------------------------------------------------------


def _percentiles(params: Any) -> list[float]:
    if hasattr(params, "low"):
        return [params.low, params.high]
    return [params.percentile]


def _pct_map(block: np.ndarray, params: Any, pass_no: int, prev: Any):
    if pass_no == 0:
        if block.size == 0:
            return None
        return {"min": block.min(), "max": block.max(), "n": block.size}
    if prev["lo"] == prev["hi"]:
        return None
    values = block.ravel()
    as_float = values.astype(np.float64)
    if pass_no == 1:
        bins = (float(prev["lo"]), float(prev["hi"]))
        return {"counts": np.histogram(as_float, bins=PERCENTILE_BINS, range=bins)[0]}
    below, windows = [], []
    for start, stop, closed in prev["windows"]:
        below.append(int(np.count_nonzero(as_float < start)))
        inside = (as_float >= start) & ((as_float <= stop) if closed else (as_float < stop))
        windows.append(np.unique(values[inside], return_counts=True))
    return {"below": np.asarray(below, dtype=np.int64), "windows": windows}


def _merge_counts(a: tuple[np.ndarray, np.ndarray], b: tuple[np.ndarray, np.ndarray]):
    values = np.concatenate([a[0], b[0]])
    counts = np.concatenate([a[1], b[1]]).astype(np.int64)
    if len(values) == 0:
        return values, counts
    order = np.argsort(values, kind="stable")
    values, counts = values[order], counts[order]
    starts = np.flatnonzero(np.concatenate([[True], values[1:] != values[:-1]]))
    return values[starts], np.add.reduceat(counts, starts)


def _pct_combine(a: Any, b: Any) -> Any:
    if a is None:
        return b
    if b is None:
        return a
    if "min" in a:
        return {
            "min": min(a["min"], b["min"]),
            "max": max(a["max"], b["max"]),
            "n": a["n"] + b["n"],
        }
    if "counts" in a:
        return {"counts": a["counts"] + b["counts"]}
    windows = [_merge_counts(x, y) for x, y in zip(a["windows"], b["windows"], strict=True)]
    return {"below": a["below"] + b["below"], "windows": windows}


def _ranks(n: int, percentile: float) -> tuple[int, int, float]:
    """Sorted ranks around a percentile and the weight between them, as numpy's `linear`."""
    virtual = (n - 1) * np.true_divide(percentile, 100)
    if virtual >= n - 1:
        return n - 1, n - 1, 0.0
    previous = int(np.floor(virtual))
    return previous, previous + 1, float(virtual - np.floor(virtual))


def _pct_finish(combined: Any, params: Any, pass_no: int, prev: Any) -> Any:
    if pass_no == 0:
        if combined is None:
            raise ValueError("the ROI is empty: nothing to compute a percentile from")
        return {"lo": combined["min"], "hi": combined["max"], "n": int(combined["n"])}
    if prev["lo"] == prev["hi"]:
        return {**prev, "values": [prev["lo"]] * len(_percentiles(params))}
    n = prev["n"]
    if pass_no == 1:
        cumulative = np.cumsum(combined["counts"])
        edges = np.histogram_bin_edges(
            np.zeros(1), bins=PERCENTILE_BINS, range=(float(prev["lo"]), float(prev["hi"]))
        )
        windows, ranks = [], []
        for p in _percentiles(params):
            first, second, gamma = _ranks(n, p)
            k0, k1 = np.searchsorted(cumulative, [first, second], side="right")
            windows.append((float(edges[k0]), float(edges[k1 + 1]), k1 + 1 == PERCENTILE_BINS))
            ranks.append((first, second, gamma))
        return {**prev, "windows": windows, "ranks": ranks}
    values = []
    for below, (vals, counts), (first, second, gamma) in zip(
        combined["below"], combined["windows"], prev["ranks"], strict=True
    ):
        ends = int(below) + np.cumsum(counts)
        pair = vals[np.searchsorted(ends, [first, second], side="right")]
        values.append(np.quantile(pair, gamma))
    return {**prev, "values": values}


# Percentiles of the ROI equal to ``numpy.percentile`` (method 'linear') for every dtype.
# Pass 0: min, max and voxel count. Pass 1: a histogram of PERCENTILE_BINS equal bins over
# [min, max] locates the bins holding the two sorted ranks around each percentile. Pass 2:
# each block returns how many of its values lie below that window and the distinct values
# (with counts) inside it, which give the exact values at those ranks; numpy itself then
# interpolates them. The window is one or two bins wide, so what pass 2 returns is bounded
# by the distinct values in it, never by the voxel count: for integers by the bin width,
# for float32 by about 512 * range / |value| per bin (large only in a bin at 0 of data
# that crosses zero, where it is bounded by the voxels in that bin).
PERCENTILE = Reduction(passes=3, map=_pct_map, combine=_pct_combine, finish=_pct_finish)


def threshold(block: np.ndarray, params: ThresholdParams, ctx: Context, value: Any = None):
    if params.method == "value":
        cut = params.value
    elif params.method == "percentile":
        cut = value["values"][0]
    elif params.method == "li":
        cut = value["value"]
    else:
        cut = value
    return block > cut


REDUCTIONS = {"otsu": OTSU, "li": LI, "percentile": PERCENTILE}

THRESHOLD = OpSpec(
    name="threshold",
    version="1",
    params=ThresholdParams,
    kind=lambda p: "blockwise" if p.method == "value" else "reduction",
    halo=lambda p, ctx: (0,) * len(ctx.spacing),
    dtype=lambda p, dtype: np.dtype(bool),
    apply=threshold,
    reduction=lambda p: REDUCTIONS.get(p.method),
    doc="Foreground mask: voxels strictly above a value, or above Otsu's or Li's threshold "
    "or a percentile over the ROI.",
    loads=lambda p: (),
)


class NormalizeParams(Params):
    low: float = Field(default=1.0, ge=0, le=100)
    high: float = Field(default=99.8, ge=0, le=100)
    clip: bool = False

    @model_validator(mode="after")
    def _ordered(self) -> NormalizeParams:
        if self.high <= self.low:
            raise ValueError(f"high ({self.high}) must be above low ({self.low})")
        return self


def normalize(block: np.ndarray, params: NormalizeParams, ctx: Context, value: Any = None):
    """(x - p_low) / (p_high - p_low) in float64, returned as float32; 0 where p_high == p_low."""
    low, high = (float(v) for v in value["values"])
    if high == low:
        return np.zeros(block.shape, dtype=np.float32)
    out = (block.astype(np.float64) - low) / (high - low)
    if params.clip:
        out = np.clip(out, 0.0, 1.0)
    return out.astype(np.float32)


NORMALIZE = OpSpec(
    name="normalize",
    version="1",
    params=NormalizeParams,
    kind=lambda p: "reduction",
    halo=lambda p, ctx: (0,) * len(ctx.spacing),
    dtype=lambda p, dtype: np.dtype(np.float32),
    apply=normalize,
    reduction=lambda p: PERCENTILE,
    doc="Percentile normalisation: (x - p_low) / (p_high - p_low) with the ROI's percentiles "
    "(numpy.percentile, linear), optionally clipped to [0, 1].",
    loads=lambda p: (),
)
