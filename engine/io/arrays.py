"""Opening, reading and writing the arrays a chunk task touches, wherever they live.

Workers call these with the run's `Workspace` (engine/io/location.py), which routes each
array path to the image or to the output location, or with a plain path (tests, tools).

Local arrays keep the fast paths measured before: handles cached per process while the
array's metadata file is unchanged (opening costs about a millisecond, as much as a small
chunk), and whole chunks read and written as files (engine/io/chunk_files.py). Remote
arrays (HTTP, S3) go through zarr's `FsspecStore`: handles are cached per process and run
(the workspace's token), a whole-chunk write is one PUT, and a box spanning several
chunks is fetched by zarr's async pipeline concurrently.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import os
from collections.abc import Iterator, Sequence

import numpy as np
import zarr

from engine.core import cpu
from engine.core.errors import NoSpace, disk_full
from engine.core.geometry import Roi
from engine.io.chunk_files import ChunkFiles, chunk_files, locate_corrupt_chunk
from engine.io.location import Location, Where, Workspace, locate


def array_location(root: Where, path: str, mode: str = "r") -> Location:
    """Where `path` is read or written. Reading a label image from a separate output
    store falls back to the image when the store has none (e.g. annotations or a
    reference drawn in the image itself)."""
    where = locate(root, path)
    if (
        mode == "r"
        and isinstance(root, Workspace)
        and root.separate
        and path.startswith("labels/")
        and not _has_array(where, root.token)
    ):
        return root.image.child(path)
    return where


@functools.lru_cache(maxsize=256)
def _has_array(where: Location, token: str) -> bool:
    return where.exists("zarr.json") or where.exists(".zarray")


def open_array(root: Where, path: str, mode: str = "r") -> zarr.Array:
    """An array, opened once per worker process while its metadata file is unchanged
    (local) or once per run (remote).

    Opening costs about a millisecond (metadata read and parsed), as much as reading or
    writing a small chunk; every chunk task opens its source and target. The key carries
    the metadata file's mtime and size, so an array created anew is opened anew.
    """
    where = array_location(root, path, mode)
    if not where.is_local:
        return _open_remote(where, mode, root.token if isinstance(root, Workspace) else "")
    url = where.url
    stamp = _metadata_stamp(url)
    if stamp is None:
        return zarr.open_array(url, mode=mode)
    return _open_cached(url, mode, stamp)


def direct_files(root: Where, path: str) -> ChunkFiles | None:
    """Direct access to an array's chunk files (engine/io/chunk_files.py), or None when it
    needs zarr (remote arrays always do); cached as `open_array` is."""
    where = array_location(root, path)
    if not where.is_local:
        return None
    stamp = _metadata_stamp(where.url)
    if stamp is None:
        return None
    return _files_cached(where.url, stamp)


def _metadata_stamp(url: str) -> tuple[int, int, int] | None:
    for name in ("zarr.json", ".zarray"):
        try:
            info = os.stat(f"{url}/{name}")
        except OSError:
            continue
        return (info.st_mtime_ns, info.st_size, info.st_ino)
    return None


@functools.lru_cache(maxsize=256)
def _open_cached(url: str, mode: str, stamp: tuple[int, int, int]) -> zarr.Array:
    if mode == "r":
        return zarr.open_array(url, mode=mode)
    # Without this, zarr compares every chunk written with the fill value to skip empty
    # ones: 23 ms for a 64x256x256 uint32 chunk, as long as encoding it. An empty chunk,
    # written, costs a few hundred bytes.
    return zarr.open_array(url, mode=mode).with_config({"write_empty_chunks": True})


@functools.lru_cache(maxsize=256)
def _open_remote(where: Location, mode: str, token: str) -> zarr.Array:
    array = zarr.open_array(where.store(read_only=mode == "r"), mode=mode)
    return array if mode == "r" else array.with_config({"write_empty_chunks": True})


@functools.lru_cache(maxsize=256)
def _files_cached(url: str, stamp: tuple[int, int, int]) -> ChunkFiles | None:
    return chunk_files(_open_cached(url, "r", stamp))


def read_array(root: Where, path: str, box: Roi | Sequence[slice]) -> np.ndarray:
    """A box (or slices) of an array: from its chunk files when it can, else through zarr."""
    before = cpu.switch(cpu.DECODE)
    try:
        slices = tuple(box.to_slices() if isinstance(box, Roi) else box)
        files = direct_files(root, path)
        if files is not None:
            return files.read_box(slices)
        array = open_array(root, path)
        try:
            return np.asarray(array[slices])
        except Exception as exc:  # a chunk zarr cannot decode: name it
            if any(s.step not in (None, 1) for s in slices):
                raise
            raise locate_corrupt_chunk(array, slices, exc) from None
    finally:
        cpu.switch(before)


@contextlib.contextmanager
def _writing(root: Where, path: str, box: Roi) -> Iterator[None]:
    """A write of `box` into the array at `path`: its CPU time counts as encoding
    (engine/core/cpu.py), a full disk is one error naming the array and the box."""
    before = cpu.switch(cpu.ENCODE)
    try:
        yield
    except OSError as exc:
        if disk_full(exc, f"{root}/{path}/"):
            raise NoSpace(f"{root}/{path} (box {box})") from None
        raise
    finally:
        cpu.switch(before)


def write_target(root: Where, path: str, box: Roi, data: np.ndarray) -> None:
    """Write a box; a box that is exactly one chunk goes straight to its chunk file."""
    with _writing(root, path, box):
        array = open_array(root, path, "r+")
        files = direct_files(root, path)
        slices = box.to_slices()
        index = files.whole_chunk(slices) if files is not None else None
        if index is not None:
            files.write(index, data.astype(files.dtype, copy=False))
        else:
            array[slices] = data.astype(array.dtype, copy=False)


def write_chunks(root: Where, path: str, box: Roi, data: np.ndarray) -> None:
    """Write a box made of whole chunks (those at the array's end clipped to it), each
    straight to its chunk file when the array allows, else the box through zarr. A task
    writing many chunks (an import's block) skips zarr's general path (engine/io/
    chunk_files.py: a chunk written in 3 ms against 16 ms through zarr)."""
    files = direct_files(root, path)
    if files is None:
        write_target(root, path, box, data)
        return
    slices = box.to_slices()
    ranges = [
        range(s.start // c, -(-s.stop // c)) for s, c in zip(slices, files.chunks, strict=True)
    ]
    grid = list(zip(slices, files.chunks, files.shape, strict=True))
    if any(s.start % c or (s.stop % c and s.stop != n) for s, c, n in grid):
        write_target(root, path, box, data)  # not whole chunks: zarr merges what is there
        return
    with _writing(root, path, box):
        for index in itertools.product(*ranges):
            part = files.chunk_box(index)
            local = tuple(
                slice(p.start - s.start, p.stop - s.start)
                for p, s in zip(part, slices, strict=True)
            )
            files.write(index, data[local])
