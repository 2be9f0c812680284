"""The compiled kernels give scipy's and numpy's results: the gaussian's passes
(tasks/_correlate.c) against `scipy.ndimage.gaussian_filter1d` bit for bit, on shapes,
sigmas, truncations and crops that vary, lines shorter than the kernel included
(reflected more than once), and the whole op against `gaussian_filter` on the whole
array; the float histogram (tasks/_histogram.c) against `np.histogram`; the median
(tasks/_median.c) against `scipy.ndimage.median_filter`."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import ndimage

from tasks import filters, threshold
from tasks.filters import (
    GaussianParams,
    MedianParams,
    gaussian,
    gaussian_cropped,
    gaussian_pass,
    median_cropped,
)
from tasks.spec import Context
from tasks.threshold import float_histogram


def test_the_compiled_pass_is_built():
    """CI builds it (a C compiler is there); without it the ops fall back to scipy,
    correct but 2.5x slower, which this test would hide if it were allowed."""
    assert filters._correlate is not None


def bits(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a).view(np.uint32)


@st.composite
def cases(draw):
    ndim = draw(st.integers(1, 3))
    shape = tuple(draw(st.lists(st.integers(1, 24), min_size=ndim, max_size=ndim)))
    axis = draw(st.integers(0, ndim - 1))
    sigma = draw(st.floats(0.1, 6.0))
    truncate = draw(st.sampled_from([1.0, 2.5, 4.0]))
    start = draw(st.integers(0, shape[axis]))
    stop = draw(st.integers(start, shape[axis]))
    seed = draw(st.integers(0, 2**16))
    return shape, axis, sigma, truncate, slice(start, stop), seed


@settings(max_examples=300, deadline=None)
@given(cases())
def test_a_pass_equals_scipy_bit_for_bit(case):
    shape, axis, sigma, truncate, keep, seed = case
    rng = np.random.default_rng(seed)
    block = (rng.normal(0, 1000, shape) * rng.random(shape) ** 3).astype(np.float32)
    want = ndimage.gaussian_filter1d(block, sigma, axis=axis, mode="reflect", truncate=truncate)
    want = want[(slice(None),) * axis + (keep,)]
    got = gaussian_pass(block, sigma, axis, keep, truncate)
    assert got.dtype == np.float32 and got.shape == want.shape
    assert np.array_equal(bits(got), bits(want))


@pytest.mark.parametrize("shape", [(48, 272, 272), (3, 1, 40), (20, 33, 5)])
@pytest.mark.parametrize("sigma", [2.0, [1.0, 2.5, 0.7]])
def test_the_op_equals_gaussian_filter_on_the_whole_array(shape, sigma):
    rng = np.random.default_rng(1)
    block = rng.integers(0, 4000, shape).astype(np.uint16)
    params = GaussianParams(sigma=sigma)
    ctx = Context(spacing=(1.0,) * 3)
    want = ndimage.gaussian_filter(block.astype(np.float32), sigma, mode="reflect")
    assert np.array_equal(bits(gaussian(block, params, ctx)), bits(want))
    keep = tuple(slice(s // 4, s - s // 5) for s in shape)
    got = gaussian_cropped(block, params, ctx, None, keep)
    assert np.array_equal(bits(got), bits(want[keep]))


def test_nan_and_infinity_spread_as_in_scipy():
    block = np.zeros((9, 12), np.float32)
    block[2, 3], block[6, 8] = np.nan, np.inf
    want = ndimage.gaussian_filter(block, 1.5, mode="reflect")
    got = gaussian(block, GaussianParams(sigma=1.5), Context(spacing=(1.0, 1.0)))
    assert np.array_equal(bits(got), bits(want))


def test_the_compiled_histogram_is_built():
    assert threshold._histogram_c is not None


@settings(max_examples=200, deadline=None)
@given(
    st.integers(1, 3000),
    st.integers(1, 300),
    st.integers(0, 2**16),
    st.sampled_from(["normal", "few values", "with nan and inf"]),
)
def test_the_float_histogram_equals_numpy(size, bins, seed, kind):
    """Values on the edges themselves, repeated values and values outside the range
    (NaN, infinities) count as numpy counts them."""
    rng = np.random.default_rng(seed)
    values = rng.normal(0, 100, size).astype(np.float32)
    if kind == "few values":
        values = rng.choice(values[:5], size)
    lo, hi = values.min(), values.max()
    if kind == "with nan and inf":
        values[rng.integers(0, size, 3)] = [np.nan, np.inf, -np.inf]
    edges = np.histogram_bin_edges(values, bins=bins, range=(lo, hi))
    values[: min(size, bins + 1)] = edges[: min(size, bins + 1)]  # exactly on the edges
    want = np.histogram(values, bins=bins, range=(lo, hi))[0]
    assert np.array_equal(float_histogram(values, bins, lo, hi), want)


def test_the_compiled_median_is_built():
    assert filters._median_c is not None


@st.composite
def median_cases(draw):
    ndim = draw(st.integers(1, 3))
    shape = tuple(draw(st.lists(st.integers(1, 20), min_size=ndim, max_size=ndim)))
    size = tuple(draw(st.lists(st.integers(1, 5), min_size=ndim, max_size=ndim)))
    keep = []
    for n in shape:
        start = draw(st.integers(0, n))
        keep.append(slice(start, draw(st.integers(start, n))))
    dtype = draw(st.sampled_from(["uint8", "int8", "uint16", ">u2", "int16", "uint32", "int32"]))
    return shape, size, tuple(keep), dtype, draw(st.integers(0, 2**16))


@settings(max_examples=300, deadline=None)
@given(median_cases())
def test_the_median_equals_scipy(case):
    """Odd and even windows (scipy takes the upper median of an even one), windows wider
    than the block (reflected more than once), crops, signed and big-endian types."""
    shape, size, keep, dtype, seed = case
    info = np.iinfo(np.dtype(dtype))
    rng = np.random.default_rng(seed)
    block = rng.integers(info.min, info.max, shape, endpoint=True).astype(dtype)
    want = ndimage.median_filter(block, size=size, mode="reflect")[keep]
    params, ctx = MedianParams(size=list(size)), Context((1.0,) * len(shape))
    got = median_cropped(block, params, ctx, None, keep)
    assert got.dtype == want.dtype and np.array_equal(got, want)
