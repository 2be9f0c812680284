"""Tests for the synthetic nuclei sample (engine.io.sample_image).

The sample feeds `ngff-engine sample`, other tests and benchmarks, so these
pin down its contract: shapes/dtypes, exact reproducibility, label invariants,
and that it is realistic enough for the standard gaussian -> Otsu pipeline.
"""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
from scipy import ndimage as ndi
from skimage.filters import gaussian, threshold_otsu

from engine.io.sample_image import NucleiSample, make_nuclei


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * np.count_nonzero(a & b) / (np.count_nonzero(a) + np.count_nonzero(b))


@pytest.fixture(scope="module")
def sample_3d() -> NucleiSample:
    return make_nuclei((64, 256, 256), seed=0)


@pytest.fixture(scope="module")
def sample_2d() -> NucleiSample:
    return make_nuclei((512, 512), seed=0)


@pytest.mark.parametrize(
    "shape",
    [(8, 8), (100, 37), (512, 512), (8, 8, 8), (13, 40, 57), (1, 64, 64), (3, 5, 2), (1, 1)],
)
def test_shape_and_dtype(shape: tuple[int, ...]) -> None:
    s = make_nuclei(shape, seed=1)
    assert isinstance(s, NucleiSample)
    assert s.image.shape == shape and s.image.dtype == np.uint16
    assert s.truth.shape == shape and s.truth.dtype == np.uint32
    assert isinstance(s.n_nuclei, int) and s.n_nuclei >= 1


def test_frozen() -> None:
    s = make_nuclei((16, 16))
    with pytest.raises(AttributeError):
        s.n_nuclei = 3  # type: ignore[misc]


@pytest.mark.parametrize("shape", [(96, 128), (12, 48, 64)])
def test_deterministic(shape: tuple[int, ...]) -> None:
    a = make_nuclei(shape, seed=7)
    b = make_nuclei(shape, seed=7)
    assert a.image.tobytes() == b.image.tobytes()
    assert a.truth.tobytes() == b.truth.tobytes()
    assert a.n_nuclei == b.n_nuclei
    c = make_nuclei(shape, seed=8)
    assert c.image.tobytes() != a.image.tobytes()
    assert c.truth.tobytes() != a.truth.tobytes()


def test_options_are_part_of_the_key() -> None:
    base = make_nuclei((96, 128), seed=7)
    for other in (
        make_nuclei((96, 128), seed=7, radius=5.0),
        make_nuclei((96, 128), seed=7, density=0.3),
    ):
        assert other.image.tobytes() != base.image.tobytes()


# Byte-exact output is a promise (benchmarks and stored results rely on it), so
# any change to the generator must be deliberate: update these digests then.
GOLDEN = {
    ((40, 56), 3): "b3efbe8717ced625f931406d419f2e1c0e13537d34120d0b114a70020fa2bcfe",
    ((6, 24, 32), 3): "aa670a01e27e26072a1e84f605f274673f353ae9a0b2c586e5ac536e953b40c2",
}


@pytest.mark.parametrize(("shape", "seed"), list(GOLDEN))
def test_golden_digest(shape: tuple[int, ...], seed: int) -> None:
    s = make_nuclei(shape, seed=seed)
    h = hashlib.sha256()
    h.update(np.ascontiguousarray(s.image, dtype="<u2").tobytes())
    h.update(np.ascontiguousarray(s.truth, dtype="<u4").tobytes())
    h.update(str(s.n_nuclei).encode())
    assert h.hexdigest() == GOLDEN[(shape, seed)]


@pytest.mark.parametrize("which", ["sample_2d", "sample_3d"])
def test_truth_ids_consecutive(which: str, request: pytest.FixtureRequest) -> None:
    s: NucleiSample = request.getfixturevalue(which)
    ids = np.unique(s.truth)
    assert ids[0] == 0
    np.testing.assert_array_equal(ids[1:], np.arange(1, s.n_nuclei + 1))
    assert s.n_nuclei > 100


@pytest.mark.parametrize("which", ["sample_2d", "sample_3d"])
def test_most_nuclei_are_separate(which: str, request: pytest.FixtureRequest) -> None:
    s: NucleiSample = request.getfixturevalue(which)
    _, n_objects = ndi.label(s.truth > 0)
    assert 0.8 * s.n_nuclei <= n_objects <= s.n_nuclei


@pytest.mark.parametrize("which", ["sample_2d", "sample_3d"])
def test_nuclei_brighter_than_background(which: str, request: pytest.FixtureRequest) -> None:
    s: NucleiSample = request.getfixturevalue(which)
    fg = s.truth > 0
    far_bg = ~ndi.binary_dilation(fg, iterations=3)
    bg_mean = s.image[far_bg].mean()
    assert 100 <= bg_mean <= 150
    assert 80 <= np.median(s.image[far_bg]) <= 170
    assert s.image[fg].mean() > 4 * bg_mean
    # Each nucleus is brighter than the background on average.
    per_nucleus = ndi.mean(s.image, s.truth, np.arange(1, s.n_nuclei + 1))
    assert per_nucleus.min() > 1.5 * bg_mean


@pytest.mark.parametrize(("which", "min_dice"), [("sample_2d", 0.9), ("sample_3d", 0.9)])
def test_gaussian_otsu_pipeline_finds_nuclei(
    which: str, min_dice: float, request: pytest.FixtureRequest
) -> None:
    s: NucleiSample = request.getfixturevalue(which)
    smooth = gaussian(s.image, sigma=2)
    mask = smooth > threshold_otsu(smooth)
    assert _dice(mask, s.truth > 0) >= min_dice


def test_density_and_radius_act() -> None:
    sparse = make_nuclei((256, 256), seed=2, density=0.2)
    dense = make_nuclei((256, 256), seed=2, density=0.8)
    assert dense.n_nuclei > 2.5 * sparse.n_nuclei
    assert make_nuclei((256, 256), density=0.0).n_nuclei == 0
    big = make_nuclei((256, 256), seed=2, radius=12.0)
    mean_area = np.count_nonzero(big.truth) / big.n_nuclei
    assert 0.6 * np.pi * 12**2 <= mean_area <= 1.3 * np.pi * 12**2


@pytest.mark.parametrize(
    "shape",
    [(), (64,), (2, 2, 2, 2), (0, 16), (16, -1), (4, 0, 4), (2.5, 8), "abc", 5],
)
def test_bad_shape_raises(shape: object) -> None:
    with pytest.raises(ValueError, match="shape"):
        make_nuclei(shape)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "kwargs",
    [{"seed": -1}, {"density": -0.1}, {"density": 1.5}, {"radius": 0.0}, {"radius": float("nan")}],
)
def test_bad_options_raise(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        make_nuclei((16, 16), **kwargs)
