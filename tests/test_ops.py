"""Ops in tasks/ alone: no engine, no cluster."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from skimage.filters import threshold_otsu

from tasks import OPS, Context
from tasks.label import resolve_components
from tasks.threshold import OTSU, ThresholdParams


def otsu_by_blocks(data: np.ndarray, splits: list[int]) -> float:
    """Run the two-pass reduction over arbitrary blocks, as the engine does."""
    params = ThresholdParams(method="otsu")
    blocks = np.array_split(data, splits)
    value = None
    for pass_no in range(OTSU.passes):
        combined = None
        for block in blocks:
            combined = OTSU.combine(combined, OTSU.map(block, params, pass_no, value))
        value = OTSU.finish(combined, params, pass_no, value)
    return value


@settings(max_examples=40, deadline=None)
@given(
    st.integers(0, 2**31),
    st.sampled_from([np.float32, np.uint16, np.uint8, np.int16]),
    st.lists(st.integers(1, 500), max_size=5),
)
def test_otsu_reduction_equals_skimage_on_the_whole(seed, dtype, splits):
    rng = np.random.default_rng(seed)
    data = np.concatenate([rng.normal(100, 10, 300), rng.normal(300, 30, 200)])
    if np.issubdtype(dtype, np.integer):
        data = np.clip(data, np.iinfo(dtype).min, np.iinfo(dtype).max)
    data = data.astype(dtype)
    splits = sorted(s for s in splits if s < len(data))
    assert otsu_by_blocks(data, splits) == threshold_otsu(data)


def test_otsu_of_a_constant_is_that_constant():
    assert otsu_by_blocks(np.full(10, 7.5, dtype=np.float32), [3]) == 7.5


def test_halo_and_dtype_from_params():
    ctx = Context(spacing=(2.0, 0.5, 0.5))
    gaussian = OPS["gaussian"]
    params = gaussian.params(sigma=1.0, units="micrometer")
    assert gaussian.halo(params, ctx) == (2, 8, 8)
    assert gaussian.dtype(params, np.dtype("uint16")) == np.float32
    params = OPS["median"].params(size=[1, 3, 5])
    assert OPS["median"].halo(params, ctx) == (0, 1, 2)
    assert OPS["threshold"].kind(OPS["threshold"].params(method="otsu")) == "reduction"
    assert OPS["threshold"].kind(OPS["threshold"].params(method="value", value=3)) == "blockwise"


def test_resolve_components_is_consecutive_and_ordered():
    pairs = np.array([[5, 2], [3, 6], [6, 7]], dtype=np.uint64)
    final = resolve_components(7, pairs)
    assert final.tolist() == [0, 1, 2, 3, 4, 2, 3, 3]


def test_function_op_checks_shape_and_dtype():
    spec = OPS["function"]
    params = spec.params(function="numpy:sqrt", dtype="float32")
    out = spec.apply(np.full((2, 2), 4, dtype=np.uint16), params, Context((1.0, 1.0)))
    assert out.dtype == np.float32 and out.tolist() == [[2, 2], [2, 2]]
    with pytest.raises(ValueError, match="declare params.dtype"):
        spec.apply(
            np.full((2, 2), 4, dtype=np.uint16),
            spec.params(function="numpy:sqrt"),
            Context((1.0, 1.0)),
        )
    with pytest.raises(ValueError, match="cannot import module 'no_such_module'"):
        spec.params(function="no_such_module:f")
