"""Direct chunk-file access against zarr itself: what one writes the other reads."""

from __future__ import annotations

import itertools
from pathlib import Path

import numcodecs
import numpy as np
import pytest
import zarr
from hypothesis import given, settings
from hypothesis import strategies as st
from zarr.codecs import BloscCodec, ZstdCodec

from engine.io.chunk_files import chunk_files
from engine.io.ngff_write import fast_compressor

SHAPE, CHUNKS = (11, 13, 7), (4, 5, 3)
LAYOUTS = {
    "v3 raw": (3, None),
    "v3 zstd": (3, ZstdCodec(level=1)),
    "v3 blosc lz4 shuffle": (3, fast_compressor("uint16", 3)),
    "v3 blosc lz4 bitshuffle": (3, BloscCodec(cname="lz4", clevel=5, shuffle="bitshuffle")),
    "v3 blosc zstd": (3, BloscCodec(cname="zstd", clevel=3, shuffle="shuffle")),
    "v2 raw": (2, None),
    "v2 zstd": (2, numcodecs.Zstd(level=1)),
    "v2 blosc": (2, fast_compressor("uint16", 2)),
}
DATA = np.arange(np.prod(SHAPE), dtype=np.uint16).reshape(SHAPE) * 7


def create(path: Path, layout: str, dtype: str = "uint16") -> zarr.Array:
    fmt, codec = LAYOUTS[layout]
    extra = {"chunk_key_encoding": {"name": "v2", "separator": "/"}} if fmt == 2 else {}
    return zarr.create_array(
        str(path),
        shape=SHAPE,
        chunks=CHUNKS,
        dtype=dtype,
        fill_value=3,
        zarr_format=fmt,
        compressors=codec,
        **extra,
    )


@pytest.mark.parametrize("layout", LAYOUTS)
def test_chunks_written_directly_read_back_through_zarr(tmp_path, layout):
    array = create(tmp_path / "a.zarr", layout)
    files = chunk_files(array)
    assert files is not None
    grid = [range(-(-s // c)) for s, c in zip(SHAPE, CHUNKS, strict=True)]
    for index in itertools.product(*grid):
        if sum(index) % 3 == 0:
            continue  # left unwritten: zarr reads the fill value there
        box = files.chunk_box(index)
        files.write(index, DATA[box])
    want = np.full(SHAPE, 3, dtype=np.uint16)
    for index in itertools.product(*grid):
        if sum(index) % 3:
            want[files.chunk_box(index)] = DATA[files.chunk_box(index)]
    np.testing.assert_array_equal(zarr.open_array(str(tmp_path / "a.zarr"))[...], want)
    assert not list((tmp_path / "a.zarr").rglob("*.partial"))


@pytest.mark.parametrize("layout", LAYOUTS)
@settings(max_examples=25, deadline=None)
@given(data=st.data())
def test_any_box_reads_as_zarr_reads_it(tmp_path_factory, layout, data):
    path = tmp_path_factory.mktemp("box") / "a.zarr"
    array = create(path, layout)
    array[:6] = DATA[:6]  # the chunks below 8 along axis 0 stay unwritten, partly
    files = chunk_files(array)
    start = [data.draw(st.integers(0, s - 1)) for s in SHAPE]
    stop = [data.draw(st.integers(a + 1, s)) for a, s in zip(start, SHAPE, strict=True)]
    box = tuple(slice(a, b) for a, b in zip(start, stop, strict=True))
    np.testing.assert_array_equal(files.read_box(box), array[box])


def test_whole_chunk_means_exactly_one_chunk_within_the_array(tmp_path):
    files = chunk_files(create(tmp_path / "a.zarr", "v3 raw"))
    assert files.whole_chunk((slice(4, 8), slice(10, 13), slice(6, 7))) == (1, 2, 2)
    assert files.whole_chunk((slice(4, 8), slice(10, 12), slice(6, 7))) is None
    assert files.whole_chunk((slice(0, 8), slice(0, 5), slice(0, 3))) is None


def test_layouts_that_need_zarr_are_left_to_it(tmp_path):
    sharded = zarr.create_array(
        str(tmp_path / "s.zarr"), shape=SHAPE, chunks=(2, 5, 3), shards=CHUNKS, dtype="uint16"
    )
    big_endian = zarr.create_array(str(tmp_path / "b.zarr"), shape=SHAPE, dtype=">u2")
    filtered = zarr.create_array(
        str(tmp_path / "f.zarr"),
        shape=SHAPE,
        dtype="uint16",
        zarr_format=2,
        filters=[numcodecs.Delta(dtype="uint16")],
    )
    gzip = zarr.create_array(
        str(tmp_path / "g.zarr"), shape=SHAPE, dtype="uint16", compressors=zarr.codecs.GzipCodec()
    )
    in_memory = zarr.create_array(zarr.storage.MemoryStore(), shape=SHAPE, dtype="uint16")
    for array in (sharded, big_endian, filtered, gzip, in_memory):
        assert chunk_files(array) is None


@pytest.mark.parametrize("layout", ["v3 raw", "v3 blosc lz4 bitshuffle", "v2 zstd"])
@settings(max_examples=25, deadline=None)
@given(data=st.data())
def test_strided_boxes_read_as_zarr_reads_them(tmp_path_factory, layout, data):
    """Every n-th voxel from any start, as a label pyramid reads the level below."""
    path = tmp_path_factory.mktemp("strided") / "a.zarr"
    array = create(path, layout)
    array[:6] = DATA[:6]
    files = chunk_files(array)
    start = [data.draw(st.integers(0, s - 1)) for s in SHAPE]
    stop = [data.draw(st.integers(a + 1, s)) for a, s in zip(start, SHAPE, strict=True)]
    step = [data.draw(st.integers(1, 5)) for _ in SHAPE]
    box = tuple(slice(a, b, f) for a, b, f in zip(start, stop, step, strict=True))
    np.testing.assert_array_equal(files.read_box(box), array[box])
