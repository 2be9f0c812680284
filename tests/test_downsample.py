"""block_mean's fast way for factors of 1 and 2 (every pyramid the engine makes) equals
the general way voxel for voxel: every dtype, odd edges, negative values, halves."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from engine.io.downsample import _block_mean_general, block_mean

DTYPES = ["bool", "uint8", "int8", "uint16", "int16", "uint32", "int32", "float32", "float64"]
SHAPES = [(5,), (7, 9), (3, 5, 6), (2, 3, 4, 5), (3, 2, 4, 5, 3)]


def sample(shape: tuple[int, ...], dtype: str, rng: np.random.Generator) -> np.ndarray:
    if dtype == "bool":
        return rng.random(shape) > 0.5
    if dtype.startswith("float"):
        return (rng.random(shape) * 200 - 100).astype(dtype)
    info = np.iinfo(dtype)
    return rng.integers(info.min, info.max, shape, dtype=dtype, endpoint=True)


@pytest.mark.parametrize("dtype", DTYPES)
def test_halving_equals_the_general_way(dtype: str) -> None:
    rng = np.random.default_rng(0)
    for shape in SHAPES:
        for factors in itertools.product((1, 2), repeat=len(shape)):
            data = sample(shape, dtype, rng)
            fast, general = block_mean(data, factors), _block_mean_general(data, factors)
            assert fast.dtype == general.dtype == data.dtype
            np.testing.assert_array_equal(fast, general, err_msg=f"{shape} {factors}")


def test_halves_round_to_even_and_edges_average_what_they_have() -> None:
    data = np.array([1, 2, 3, 4, 5, 6, 7], np.int16)  # 1.5 -> 2, 3.5 -> 4, 5.5 -> 6, 7
    np.testing.assert_array_equal(block_mean(data, (2,)), [2, 4, 6, 7])
    data = np.array([[0, 1], [0, 1]], np.uint16)  # mean 0.5 -> 0
    np.testing.assert_array_equal(block_mean(data, (2, 2)), [[0]])
    data = np.array([[-3, -2], [-2, -2]], np.int32)  # -2.25 -> -2
    np.testing.assert_array_equal(block_mean(data, (2, 2)), [[-2]])
    data = np.full((4, 4), 65535, np.uint16)  # no overflow
    np.testing.assert_array_equal(block_mean(data, (2, 2)), np.full((2, 2), 65535))


@pytest.mark.parametrize("dtype", DTYPES)
def test_whole_blocks_round_in_integers_as_the_general_way(dtype: str) -> None:
    """Every block whole (even sizes along the halved axes): integer sums rounded half to
    even in integers, equal to the general way, extremes of the dtype included."""
    rng = np.random.default_rng(1)
    for shape in [(6,), (4, 8), (2, 6, 4), (2, 2, 4, 2)]:
        for factors in itertools.product((1, 2), repeat=len(shape)):
            data = sample(shape, dtype, rng)
            if data.dtype.kind in "iu":
                data.flat[:2] = np.iinfo(data.dtype).max
                data.flat[-2:] = np.iinfo(data.dtype).min
            fast, general = block_mean(data, factors), _block_mean_general(data, factors)
            np.testing.assert_array_equal(fast, general, err_msg=f"{shape} {factors}")
