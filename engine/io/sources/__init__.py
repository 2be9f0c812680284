"""Sources an image is imported from: TIFF (incl. OME-TIFF, ImageJ hyperstacks), a series of
2D TIFF planes, an HDF5 dataset, or whatever a bioio reader plugin opens.

Every reader gives the same small thing, a `Source`: shape, dtype, axes in NGFF order
(a subset of t, c, z, y, x), physical scale and units per axis, channel names and colours,
and `read(box)`, which returns one box of the array and never more. The import's chunk
tasks each read their own box on a worker, so no process ever holds the whole file: TIFF
tiles and strips are read lazily through tifffile's zarr store, HDF5 hyperslabs through
h5py, planes one file at a time.

A reader is described by a `SourceSpec` (plain, picklable: what the driver ships to the
workers) and opened from it once per worker process (`open_source`, cached).

What a file does not say is asked for, never guessed: an axis tifffile cannot name
(`Q`, `I`) needs `--axes`, a spatial axis without a physical size needs `--scale` (and
`--unit` where the file gives sizes without a unit).
"""

from __future__ import annotations

import functools
import os
from dataclasses import replace

import numpy as np

from engine.io.sources.base import (
    AxisMap,
    Channel,
    Source,
    SourceError,
    SourceInfo,
    SourceSpec,
    axis_map,
    complete_info,
    ngff_unit,
    parse_scale,
)

__all__ = [
    "AxisMap",
    "Channel",
    "Source",
    "SourceError",
    "SourceInfo",
    "SourceSpec",
    "axis_map",
    "complete_info",
    "detect_kind",
    "ngff_unit",
    "open_source",
    "parse_scale",
    "read_into",
    "resolve_spec",
]


def read_into(source: Source, box: tuple[slice, ...], out: np.ndarray) -> None:
    """`source.read(box)` into `out` (the box's shape, native byte order): straight from
    the file where the reader can (TIFF memory maps, planes), else through a copy."""
    method = getattr(source, "read_into", None)
    if method is not None:
        method(box, out)
    else:
        out[...] = source.read(box)


def detect_kind(path: str, dataset: str | None, pattern: str | None) -> str:
    """What reader a source path needs, from its name (and whether it is a folder)."""
    from pathlib import Path

    p = Path(path)
    lower = p.name.lower()
    if pattern is not None or p.is_dir() or any(ch in path for ch in "*?["):
        return "planes"
    if lower.endswith((".tif", ".tiff", ".btf", ".tf2", ".tf8")):
        return "tiff"
    if lower.endswith((".h5", ".hdf5", ".hdf", ".he5", ".ims")):
        return "hdf5"
    if dataset is not None:
        return "hdf5"
    return "bioio"


def open_source(spec: SourceSpec, check: bool = True) -> Source:
    """The reader for a spec, opened once per process and kept (a worker reads many boxes)
    while the source path's size and time are unchanged (a file written anew is opened
    anew). `check=False` (workers) skips what the driver checked already (every plane's
    header)."""
    try:
        info = os.stat(spec.path)
        stamp: tuple[int, ...] = (info.st_size, info.st_mtime_ns, info.st_ino)
    except OSError:
        stamp = ()  # a glob, or missing: the reader says so
    return _open_cached(spec, check, stamp)


@functools.lru_cache(maxsize=8)
def _open_cached(spec: SourceSpec, check: bool, stamp: tuple[int, ...]) -> Source:
    if spec.kind == "tiff":
        from engine.io.sources.tiff import TiffSource

        return TiffSource(spec)
    if spec.kind == "planes":
        from engine.io.sources.planes import PlaneSource

        return PlaneSource(spec, check)
    if spec.kind == "hdf5":
        from engine.io.sources.hdf5 import Hdf5Source

        return Hdf5Source(spec)
    if spec.kind == "bioio":
        from engine.io.sources.bioio_reader import BioioSource

        return BioioSource(spec)
    raise SourceError(f"{spec.path}: unknown source kind {spec.kind!r}")


def resolve_spec(spec: SourceSpec) -> SourceSpec:
    """The spec with what the driver resolves once (a plane series' file list)."""
    if spec.kind == "planes" and not spec.files:
        from engine.io.sources.planes import find_planes

        files, grid = find_planes(spec.path, spec.pattern)
        return replace(spec, files=files, grid=grid)
    return spec
