"""What every source reader shares: the spec a worker opens a source from, what a source
says about itself (`SourceInfo`), the `Source` protocol, the mapping of stored axes to
NGFF order and the check that physical sizes are known (engine/io/sources/__init__.py
says why)."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

import numpy as np

from engine.core.errors import EngineError

NGFF_ORDER = "tczyx"
SPATIAL = "zyx"
# how files spell units -> NGFF (UDUNITS-2) names
UNIT_NAMES: dict[str, str] = {
    "µm": "micrometer",
    "\u03bcm": "micrometer",
    "\\u00b5m": "micrometer",
    "um": "micrometer",
    "micron": "micrometer",
    "microns": "micrometer",
    "micrometer": "micrometer",
    "nm": "nanometer",
    "nanometer": "nanometer",
    "mm": "millimeter",
    "millimeter": "millimeter",
    "cm": "centimeter",
    "centimeter": "centimeter",
    "m": "meter",
    "meter": "meter",
    "å": "angstrom",
    "angstrom": "angstrom",
    "inch": "inch",
    "s": "second",
    "sec": "second",
    "second": "second",
    "ms": "millisecond",
    "millisecond": "millisecond",
    "min": "minute",
    "minute": "minute",
    "h": "hour",
    "hour": "hour",
}


class SourceError(EngineError):
    """A source file is unreadable, truncated or inconsistent; the message names the file."""


def ngff_unit(text: str | None) -> str | None:
    """A unit as NGFF names it; None for none or one it does not know."""
    if text is None:
        return None
    return UNIT_NAMES.get(str(text).strip().lower().replace("\\u00b5", "µ"))


@dataclass(frozen=True)
class Channel:
    name: str | None = None
    color: str | None = None  # RRGGBB hex, as NGFF omero wants it


@dataclass(frozen=True)
class SourceInfo:
    """What a source says about itself, axes already in NGFF order. `scale` and `units`
    hold only what the file (or the user) gave; `missing()` lists what is not known."""

    path: str
    shape: tuple[int, ...]
    dtype: str
    axes: str  # e.g. "czyx"
    scale: Mapping[str, float] = field(default_factory=dict)
    units: Mapping[str, str] = field(default_factory=dict)
    channels: tuple[Channel, ...] = ()
    files: tuple[str, ...] = ()  # every file the data comes from

    def missing(self) -> list[str]:
        """Spatial axes without a physical size or unit."""
        return [
            a for a in self.axes if a in SPATIAL and (a not in self.scale or a not in self.units)
        ]


class Source(Protocol):
    """A readable image: its info and `read(box)` for a box in NGFF axis order."""

    info: SourceInfo

    @property
    def read_unit(self) -> tuple[int, ...]:
        """Per NGFF axis, the size of what one read decodes whole (a TIFF page or tile,
        an HDF5 chunk); ones where a box is read exactly."""
        ...

    def read(self, box: Sequence[slice]) -> np.ndarray: ...


@dataclass(frozen=True)
class SourceSpec:
    """How to open a source: picklable, shipped to workers. `axes` overrides the file's
    own axis names (native order, e.g. "zyx" for tifffile's "QYX"); `scale`/`unit` give
    physical sizes the file lacks or overrides."""

    kind: str  # "tiff", "planes", "hdf5", "bioio"
    path: str
    series: int | None = None
    dataset: str | None = None
    pattern: str | None = None
    files: tuple[str, ...] = ()  # planes: the files, resolved once on the driver
    grid: tuple[int, ...] = ()  # planes: files per pattern axis
    axes: str | None = None
    scale: tuple[tuple[str, float], ...] = ()
    unit: str | None = None


def parse_scale(text: str | None) -> tuple[tuple[str, float], ...]:
    """`z=2,y=0.325,x=0.325` -> (("z", 2.0), ...)."""
    if not text:
        return ()
    out = []
    for part in text.split(","):
        match = re.fullmatch(r"\s*([tczyx])\s*=\s*([0-9.eE+-]+)\s*", part)
        if not match:
            raise SourceError(f"--scale '{text}': '{part}' is not axis=size (axes t, z, y, x)")
        value = float(match.group(2))
        if not value > 0:
            raise SourceError(f"--scale '{text}': {match.group(1)} must be positive")
        out.append((match.group(1), value))
    return tuple(out)


# --- axes: native order -> NGFF order --------------------------------------------------

TIFFFILE_AXES = {"T": "t", "C": "c", "S": "c", "Z": "z", "Y": "y", "X": "x"}


@dataclass(frozen=True)
class AxisMap:
    """Native axes (as the file stores them) and where each goes in NGFF order."""

    native: str  # lower case, one letter per native axis, e.g. "zcyx"
    order: tuple[int, ...]  # native axis index of each NGFF axis

    @property
    def axes(self) -> str:
        return "".join(self.native[i] for i in self.order)

    def native_box(self, box: Sequence[slice]) -> tuple[slice, ...]:
        out = [slice(None)] * len(self.native)
        for k, i in enumerate(self.order):
            out[i] = box[k]
        return tuple(out)

    def to_ngff(self, data: np.ndarray) -> np.ndarray:
        return np.transpose(data, self.order) if self.order != tuple(range(data.ndim)) else data

    def shape(self, native_shape: Sequence[int]) -> tuple[int, ...]:
        return tuple(int(native_shape[i]) for i in self.order)


def axis_map(path: str, native: str, override: str | None, shape: Sequence[int]) -> AxisMap:
    """Map native axis letters (tifffile's, or names from a file) to t, c, z, y, x.

    `override` (--axes) names the native axes in their stored order. Letters that do not
    name an NGFF axis, or a name used twice, are an error asking for --axes."""
    if override is not None:
        names = override.strip().lower()
        if len(names) != len(shape):
            raise SourceError(
                f"{path}: --axes '{override}' names {len(names)} axes; the data has "
                f"{len(shape)} (shape {tuple(shape)})"
            )
    else:
        names = "".join(TIFFFILE_AXES.get(a.upper(), "?") for a in native)
    unknown = [native[i] if i < len(native) else "?" for i, n in enumerate(names) if n == "?"]
    if unknown or any(n not in NGFF_ORDER for n in names):
        raise SourceError(
            f"{path}: cannot tell what axis {' and '.join(repr(u) for u in unknown) or names!r} "
            f"of shape {tuple(shape)} is (stored axes {native!r}); give --axes, e.g. "
            f"--axes {_example_axes(len(shape))}"
        )
    if len(set(names)) != len(names):
        raise SourceError(
            f"{path}: axes {names!r} name an axis twice; give --axes with each of t, c, z, y, x "
            "at most once"
        )
    order = tuple(sorted(range(len(names)), key=lambda i: NGFF_ORDER.index(names[i])))
    return AxisMap(names, order)


def _example_axes(n: int) -> str:
    return {2: "yx", 3: "zyx", 4: "czyx", 5: "tczyx"}.get(n, "tczyx")


def complete_info(info: SourceInfo, spec: SourceSpec) -> SourceInfo:
    """The user's --scale/--unit over what the file said; checks that every spatial axis
    has a size and a unit."""
    scale = dict(info.scale)
    units = dict(info.units)
    for axis, value in spec.scale:
        if axis not in info.axes:
            raise SourceError(
                f"{info.path}: --scale gives '{axis}', which the data does not have "
                f"(axes {', '.join(info.axes)})"
            )
        scale[axis] = value
    if spec.unit is not None:
        unit = ngff_unit(spec.unit)
        if unit is None:
            raise SourceError(f"--unit '{spec.unit}' is not a unit NGFF knows (e.g. micrometer)")
        for axis in info.axes:
            if axis in SPATIAL:
                units[axis] = unit
    result = replace(info, scale=scale, units=units)
    missing = result.missing()
    if missing:
        no_size = [a for a in missing if a not in scale]
        what = (
            f"no physical pixel size for {', '.join(no_size)}"
            if no_size
            else f"no unit for the pixel size of {', '.join(missing)}"
        )
        example = ",".join(f"{a}={scale.get(a, 1)}" for a in info.axes if a in SPATIAL)
        raise SourceError(
            f"{info.path}: {what}; give --scale {example} --unit micrometer "
            "(the sizes as the microscope recorded them)"
        )
    return result


def color_hex(value: Any) -> str | None:
    """An OME colour (signed 32-bit RGBA integer) as RRGGBB."""
    try:
        rgba = int(value) & 0xFFFFFFFF
    except (TypeError, ValueError):
        return None
    return f"{rgba >> 24 & 0xFF:02X}{rgba >> 16 & 0xFF:02X}{rgba >> 8 & 0xFF:02X}"
