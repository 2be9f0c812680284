"""A series of 2D TIFF planes: a folder, a glob, or a pattern such as `t{t}_c{c}_z{z}.tif`.

Without a pattern the files, in natural order (`z2` before `z10`), are the z planes.
With one, each `{t}`, `{c}`, `{z}` matches an integer, and the files must form the
full grid of the values found (a missing combination is named). Every plane is checked
on the driver before anything is written: same shape and dtype as the first, not
truncated; the error names the file that differs. A task reads only its planes, each
through the TIFF reader (engine/io/sources/tiff.py), so a box of a plane is read, not
the plane.

Physical sizes of y and x come from the first plane's tags (ImageJ, OME, resolution);
the spacing of z (and t) is not in a single plane: it is asked for with --scale.
"""

from __future__ import annotations

import functools
import glob
import itertools
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from engine.io.sources.base import (
    SourceError,
    SourceInfo,
    SourceSpec,
    complete_info,
)
from engine.io.sources.tiff import (
    SeriesReader,
    check_complete,
    open_tiff,
    pick_series,
    tiff_metadata,
)

TIFF_SUFFIXES = (".tif", ".tiff")
PLACEHOLDERS = "tcz"


def _natural(name: str) -> list:
    return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", name)]


def find_planes(path: str, pattern: str | None) -> tuple[tuple[str, ...], tuple[int, ...]]:
    """The plane files in (t, c, z) C order and the grid size per pattern axis present
    (z alone without a pattern)."""
    p = Path(path)
    if p.is_dir():
        candidates = [str(f) for f in p.iterdir() if f.is_file()]
        if pattern is None:
            candidates = [f for f in candidates if f.lower().endswith(TIFF_SUFFIXES)]
    elif any(ch in path for ch in "*?["):
        candidates = [f for f in glob.glob(path) if Path(f).is_file()]
    else:
        raise SourceError(f"{path}: no such folder (a plane series is a folder or a glob)")
    if pattern is None:
        files = sorted(candidates, key=lambda f: _natural(Path(f).name))
        if not files:
            raise SourceError(f"{path}: no TIFF files match")
        return tuple(files), (len(files),)
    return _by_pattern(path, pattern, candidates)


def _by_pattern(
    path: str, pattern: str, candidates: Sequence[str]
) -> tuple[tuple[str, ...], tuple[int, ...]]:
    names = re.findall(r"\{(\w+)\}", pattern)
    bad = [n for n in names if n not in PLACEHOLDERS]
    if bad or not names or len(set(names)) != len(names):
        raise SourceError(
            f"--pattern '{pattern}': use each of {{t}}, {{c}}, {{z}} at most once "
            f"(found {', '.join('{' + n + '}' for n in names) or 'none'})"
        )
    regex = ""
    for part in re.split(r"(\{\w+\})", pattern):
        match = re.fullmatch(r"\{(\w+)\}", part)
        regex += f"(?P<{match.group(1)}>\\d+)" if match else re.escape(part)
    found: dict[tuple[int, ...], str] = {}
    axes = [a for a in PLACEHOLDERS if a in names]
    for f in candidates:
        m = re.fullmatch(regex, Path(f).name)
        if m is None:
            continue
        key = tuple(int(m.group(a)) for a in axes)
        if key in found:
            raise SourceError(
                f"{f}: the same {', '.join(f'{a}={v}' for a, v in zip(axes, key, strict=True))} "
                f"as {found[key]}"
            )
        found[key] = f
    if not found:
        raise SourceError(f"{path}: no file matches --pattern '{pattern}'")
    values = [sorted({k[i] for k in found}) for i in range(len(axes))]
    files = []
    for key in itertools.product(*values):
        if key not in found:
            where = ", ".join(f"{a}={v}" for a, v in zip(axes, key, strict=True))
            raise SourceError(f"{path}: --pattern '{pattern}': no file for {where}")
        files.append(found[key])
    return tuple(files), tuple(len(v) for v in values)


class PlaneSource:
    def __init__(self, spec: SourceSpec, check_all: bool = True) -> None:
        if not spec.files:
            raise SourceError(f"{spec.path}: no plane files resolved")
        self.spec = spec
        self.files = spec.files
        names = re.findall(r"\{(\w+)\}", spec.pattern) if spec.pattern else ["z"]
        self.grid_axes = [a for a in PLACEHOLDERS if a in names]
        first = spec.files[0]
        with open_tiff(first) as tif:
            series = pick_series(tif, first, 0)
            if len(series.shape) != 2 and not (series.axes.endswith("YXS")):
                raise SourceError(
                    f"{first}: a plane of a series must be 2D, this one has axes {series.axes} "
                    f"and shape {series.shape}"
                )
            self.plane_shape = tuple(int(s) for s in series.shape)
            self.dtype = np.dtype(series.dtype)
            meta = tiff_metadata(tif, series, 0, "yx")
            check_complete(first, series)
        if check_all:
            for f in spec.files[1:]:
                self._check(f)
        extra = "c" if len(self.plane_shape) == 3 else ""  # RGB planes: samples as channels
        if extra and "c" in self.grid_axes:
            raise SourceError(f"{first}: RGB planes with a {{c}} in the pattern")
        axes = "".join(a for a in "tcz" if a in self.grid_axes or a == extra) + "yx"
        shape = []
        for a in axes:
            if a in self.grid_axes:
                shape.append(spec.grid[self.grid_axes.index(a)])
            elif a == "c":
                shape.append(self.plane_shape[2])
            else:
                shape.append(self.plane_shape["yx".index(a)])
        scale = {a: v for a, v in meta["scale"].items() if a in "yx"}
        units = {a: v for a, v in meta["units"].items() if a in "yx"}
        info = SourceInfo(
            path=spec.path,
            shape=tuple(shape),
            dtype=str(self.dtype.newbyteorder("=")),
            axes=axes,
            scale=scale,
            units=units,
            files=self.files,
        )
        self.info = complete_info(info, spec)
        self.axes = axes
        self.rgb = bool(extra)

    def _check(self, path: str) -> None:
        with open_tiff(path) as tif:
            series = pick_series(tif, path, 0)
            shape = tuple(int(s) for s in series.shape)
            if shape != self.plane_shape:
                raise SourceError(
                    f"{path}: plane shape {shape} differs from {self.plane_shape} "
                    f"of {self.files[0]}"
                )
            if np.dtype(series.dtype) != self.dtype:
                raise SourceError(
                    f"{path}: plane dtype {np.dtype(series.dtype)} differs from {self.dtype} "
                    f"of {self.files[0]}"
                )
            check_complete(path, series)

    @property
    def read_unit(self) -> tuple[int, ...]:
        return tuple(1 for _ in self.axes)

    def read(self, box: Sequence[slice]) -> np.ndarray:
        box = tuple(box)
        ranges = [range(*s.indices(n)) for s, n in zip(box, self.info.shape, strict=True)]
        out = np.empty(tuple(len(r) for r in ranges), self.dtype.newbyteorder("="))
        self.read_into(box, out)
        return out

    def read_into(self, box: Sequence[slice], out: np.ndarray) -> None:
        """`read(box)` into `out`: each plane's box straight from its file into its place."""
        box = tuple(box)
        ranges = [range(*s.indices(n)) for s, n in zip(box, self.info.shape, strict=True)]
        grid_at = [self.axes.index(a) for a in self.grid_axes]
        yx = box[-2:]
        native = (*yx, box[self.axes.index("c")]) if self.rgb else yx
        for key in itertools.product(*(ranges[i] for i in grid_at)):
            position = int(np.ravel_multi_index(key, self.spec.grid))
            where: list = [slice(None)] * out.ndim
            for i, k in zip(grid_at, key, strict=True):
                where[i] = k - ranges[i].start
            reader = _plane_reader(self.files[position])
            if self.rgb:
                out[tuple(where)] = np.moveaxis(reader.read(native), -1, 0)
            else:
                reader.read_into(native, out[tuple(where)])


def _plane_reader(path: str) -> SeriesReader:
    """A plane's reader, kept per worker process: one read through a memory map needs no
    open file, so thousands are kept (a task reads a box of each of its planes, and the
    next task of the same planes, beside it, opens none of them again: about 0.6 ms per
    TIFF header); the zarr store of a compressed or tiled plane keeps its TIFF open, so
    64 of those."""
    return _mapped_plane(path) or _stored_plane(path)


@functools.lru_cache(maxsize=8192)
def _mapped_plane(path: str) -> SeriesReader | None:
    with open_tiff(path) as tif:
        reader = SeriesReader(path, tif, pick_series(tif, path, 0))
        return reader if reader.array is None else None


@functools.lru_cache(maxsize=64)
def _stored_plane(path: str) -> SeriesReader:
    tif = open_tiff(path)
    return SeriesReader(path, tif, pick_series(tif, path, 0))
