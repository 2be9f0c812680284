"""The compiled kernels give scipy's and numpy's results: the gaussian's passes
(tasks/_correlate.c) against `scipy.ndimage.gaussian_filter1d` bit for bit, on shapes,
sigmas, truncations and crops that vary, lines shorter than the kernel included
(reflected more than once), and the whole op against `gaussian_filter` on the whole
array; the float histogram (tasks/_histogram.c) against `np.histogram`; the median
(tasks/_median.c) against `scipy.ndimage.median_filter`; connected components
(tasks/_label.c) against `scipy.ndimage.label`, the same ids, and a small run of the
standard pipeline, all compiled, without scipy.ndimage."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import engine_environment, nuclei_config
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import ndimage

from tasks import filters, label, threshold
from tasks.filters import (
    GaussianParams,
    MedianParams,
    gaussian,
    gaussian_cropped,
    gaussian_pass,
    median_cropped,
)
from tasks.label import LabelParams, label_block
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


def test_the_compiled_label_is_built():
    """And so the op has nothing for a run to load ahead (scipy.ndimage: 0.25 s)."""
    assert label._label_c is not None
    assert label.LABEL.loads(LabelParams(connectivity=3)) == ()


def scipy_label(mask: np.ndarray, connectivity: int) -> np.ndarray:
    structure = ndimage.generate_binary_structure(mask.ndim, connectivity)
    return ndimage.label(mask, structure=structure)[0]


def compiled_label(mask: np.ndarray, connectivity: int) -> np.ndarray:
    ctx = Context((1.0,) * mask.ndim)
    return label_block(mask, LabelParams(connectivity=connectivity), ctx)


@st.composite
def label_cases(draw):
    ndim = draw(st.integers(1, 3))
    shape = tuple(draw(st.lists(st.integers(1, 20), min_size=ndim - 1, max_size=ndim - 1)))
    shape += (draw(st.one_of(st.integers(1, 20), st.integers(60, 200))),)  # 64 voxels a word
    density = draw(st.sampled_from([0.02, 0.1, 0.3, 0.5, 0.7, 0.9, 0.98]))
    connectivity = draw(st.integers(1, ndim))
    dtype = draw(st.sampled_from(["bool", "uint8", "int16", ">u2", "int64", "float32"]))
    return shape, density, connectivity, dtype, draw(st.integers(0, 2**16))


@settings(max_examples=400, deadline=None)
@given(label_cases())
def test_the_label_equals_scipy(case):
    """The same ids as scipy, not only the same components: numbered in the order of
    their first voxel in a C-order scan, however they merge (U shapes, diagonals). Masks
    from sparse to dense, of bool, integer (any byte order) and float voxels; lines
    longer than the 64 voxels the kernel reads at a time; the kernel's 64-bit run indices
    too, which only blocks of 2**32 runs would otherwise reach."""
    shape, density, connectivity, dtype, seed = case
    rng = np.random.default_rng(seed)
    values = rng.integers(1, 100, shape) * (rng.random(shape) < density)
    mask = values.astype(dtype)
    got = compiled_label(mask, connectivity)
    native = mask.astype(mask.dtype.newbyteorder("="))  # scipy takes no other byte order
    want = scipy_label(native, connectivity)
    assert got.dtype == np.uint32 and np.array_equal(got, want)
    if mask.dtype.kind != "f":  # the 64-bit run indices of blocks of 2**32 runs
        wide = np.empty(shape, np.uint32)
        flat = np.ascontiguousarray(mask).reshape(-1).view(np.uint8)
        padded = (1,) * (3 - len(shape)) + shape
        n = label._label_c.label(flat, wide, mask.itemsize, padded, connectivity, True)
        assert n == want.max() and np.array_equal(wide, want)


@pytest.mark.parametrize(
    "shape", [(0,), (5, 0), (0, 7), (3, 0, 4), (0, 0, 0), (1,), (1, 1, 1), (7,), (4, 9), (3, 5, 6)]
)
@pytest.mark.parametrize("fill", ["empty", "full", "one voxel", "checkerboard"])
def test_the_label_edge_cases_equal_scipy(shape, fill):
    mask = np.zeros(shape, bool)
    if fill == "full":
        mask[...] = True
    elif fill == "one voxel" and mask.size:
        mask[tuple(n // 2 for n in shape)] = True
    elif fill == "checkerboard":
        mask = np.indices(shape).sum(axis=0) % 2 == 0
    for connectivity in range(1, len(shape) + 1):
        got = compiled_label(mask, connectivity)
        assert got.shape == shape
        assert np.array_equal(got, scipy_label(mask, connectivity))


def test_a_strided_mask_and_four_axes_equal_scipy():
    """A view (copied for the kernel) and a mask of four axes (scipy's)."""
    mask = np.random.default_rng(3).random((6, 8, 10, 12)) < 0.4
    view = mask[1, ::2, 1:, ::-3]
    assert np.array_equal(compiled_label(view, 2), scipy_label(view, 2))
    assert np.array_equal(compiled_label(mask, 3), scipy_label(mask, 3))
    with pytest.raises(ValueError, match="connectivity 3 is more than the 2 spatial axes"):
        compiled_label(view[0], 3)


def test_the_structure_is_scipys():
    for ndim in (1, 2, 3, 4):
        for connectivity in range(1, ndim + 1):
            want = ndimage.generate_binary_structure(ndim, connectivity)
            got = label.structure(ndim, connectivity)
            assert got.dtype == want.dtype and np.array_equal(got, want)


def run_alone(script: str) -> None:
    """`script` in a fresh interpreter (a clean sys.modules, its own limits): it passes."""
    root = Path(label.__file__).parents[1]
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=root, capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr


def test_labelling_imports_no_scipy():
    """scipy.ndimage takes 0.25 s to import, holding the GIL: a run whose ops have compiled
    kernels needs none of it."""
    script = (
        "import sys, numpy as np, tasks.label as L\n"
        "from tasks.spec import Context\n"
        "mask = np.random.default_rng(0).random((8, 16, 16)) < 0.5\n"
        "labels = L.label_block(mask, L.LabelParams(connectivity=3), Context((1.0,) * 3))\n"
        "assert labels.max() > 0, labels.max()\n"
        "assert L._label_c is not None\n"
        "assert 'scipy' not in sys.modules, sorted(m for m in sys.modules if 'scipy' in m)\n"
    )
    run_alone(script)


def test_the_label_kernel_raises_memory_error_when_its_run_tables_do_not_fit():
    """In a process whose address space is capped 1 MiB above what it holds: a
    MemoryError, and labelling works again once memory is there."""
    script = (
        "import resource, numpy as np, tasks.label as L\n"
        "mask = np.random.default_rng(0).random((32, 256, 256)) < 0.5\n"
        "out = np.zeros(mask.shape, np.uint32)\n"
        "flat = mask.reshape(-1).view(np.uint8)\n"
        "held = int(open('/proc/self/statm').read().split()[0]) * resource.getpagesize()\n"
        "resource.setrlimit(resource.RLIMIT_AS, (held + (1 << 20), resource.RLIM_INFINITY))\n"
        "try:\n"
        "    L._label_c.label(flat, out, 1, mask.shape, 1)\n"
        "    raise SystemExit('no MemoryError')\n"
        "except MemoryError:\n"
        "    pass\n"
        "resource.setrlimit(resource.RLIMIT_AS, (resource.RLIM_INFINITY,) * 2)\n"
        "assert L._label_c.label(flat, out, 1, mask.shape, 1) == out.max() > 1000\n"
    )
    run_alone(script)


def test_without_the_compiled_label_scipy_gives_the_same_ids(monkeypatch):
    """An install without a C compiler labels with scipy (imported there, not before)."""
    mask = np.random.default_rng(5).random((6, 30, 40)) < 0.45
    want = compiled_label(mask, 2)
    monkeypatch.setattr(label, "_label_c", None)
    got = compiled_label(mask, 2)
    assert got.dtype == np.uint32 and np.array_equal(got, want)
    assert np.array_equal(got, scipy_label(mask, 2))


def test_a_small_run_of_the_standard_pipeline_imports_no_scipy_ndimage(tmp_path, sample_image):
    """gaussian -> Otsu -> label on threads of the command, all compiled: neither the ops
    nor what the run loads ahead for them (OpSpec.loads) import scipy.ndimage, 0.25 s of
    imports holding the GIL beside the first tasks."""
    image = sample_image((16, 96, 80), (8, 48, 40), copy_to=tmp_path / "a.zarr")
    script = (
        "import json, sys, engine\n"
        f"result = engine.run({str(nuclei_config(tmp_path))!r}, {str(image)!r}, warm=False)\n"
        "print(json.dumps([result.labels['nuclei'], sorted(m for m in sys.modules\n"
        "                  if m.startswith(('scipy.ndimage', 'skimage.filters')))]))\n"
    )
    env = engine_environment()
    env["NGFF_ENGINE_IN_PROCESS_MAX"] = "32MiB"
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300
    )
    assert done.returncode == 0, done.stderr
    objects, imported = json.loads(done.stdout.splitlines()[-1])
    assert objects > 0 and imported == []
