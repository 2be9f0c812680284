"""TIFF, BigTIFF, ImageJ hyperstacks and OME-TIFF (tiled, striped, multi-series), read with
tifffile.

Two ways to read a box, both lazy (a task reads its box, never the file):
- contiguous, uncompressed data (what tifffile, ImageJ and most acquisition software
  write): a read-only memory map of exactly the series' bytes at the offset tifffile
  reports, opened for the read and closed after it, so only the pages the box touches
  are read and none stay resident in the worker;
- anything else (tiles, strips, compression): tifffile's zarr store (`aszarr`), which
  decodes only the tiles or strips the box meets.

Metadata, in this order: OME-XML (PhysicalSize*, TimeIncrement, channel Name and
Color), ImageJ (`spacing`, `unit`, `finterval`, XResolution, LUT colours), the TIFF
resolution tags with ResolutionUnit inch or centimeter.
"""

from __future__ import annotations

import mmap
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import tifffile
import zarr

from engine.io.sources.base import (
    AxisMap,
    Channel,
    SourceError,
    SourceInfo,
    SourceSpec,
    axis_map,
    color_hex,
    complete_info,
    ngff_unit,
)

RESOLUTION_UNIT_UM = {2: 25400.0, 3: 10000.0}  # TIFF ResolutionUnit inch, centimeter
MAP_WINDOW_BYTES = 16 * 1024**2  # most of the file one memory map shows at a time


def open_tiff(path: str) -> tifffile.TiffFile:
    try:
        return tifffile.TiffFile(path)
    except FileNotFoundError:
        raise SourceError(f"{path}: no such file") from None
    except (tifffile.TiffFileError, OSError, ValueError, KeyError, IndexError) as exc:
        raise SourceError(f"{path}: not a readable TIFF ({exc})") from None


def pick_series(tif: tifffile.TiffFile, path: str, series: int | None) -> tifffile.TiffPageSeries:
    found = tif.series
    if not found:
        raise SourceError(f"{path}: no image in this TIFF")
    if series is None:
        if len(found) > 1:
            listing = "; ".join(f"{i}: {s.axes} {s.shape} {s.dtype}" for i, s in enumerate(found))
            raise SourceError(f"{path}: holds {len(found)} images ({listing}); give --series N")
        series = 0
    if not 0 <= series < len(found):
        raise SourceError(f"{path}: --series {series} does not exist (it has {len(found)})")
    return found[series]


def check_complete(path: str, series: tifffile.TiffPageSeries) -> None:
    """A truncated file (a copy cut short) is refused here, naming the file, rather than
    failing in a worker halfway through the import."""
    size = os.path.getsize(path)
    if series.dataoffset is not None:
        end = series.dataoffset + series.nbytes
        if end > size:
            raise SourceError(
                f"{path}: truncated: its image data runs to byte {end}, the file has {size}"
            )
        return
    for page in series.pages:
        if page is None:
            raise SourceError(f"{path}: truncated or damaged: a page of the image is missing")
        page = page.aspage() if hasattr(page, "aspage") else page
        ends = [o + n for o, n in zip(page.dataoffsets, page.databytecounts, strict=False) if n]
        if ends and max(ends) > size:
            raise SourceError(
                f"{path}: truncated: page {page.index} runs to byte {max(ends)}, "
                f"the file has {size}"
            )


class SeriesReader:
    """Boxes (native axis order) of one TIFF series: a memory map of contiguous data, else
    tifffile's zarr store."""

    def __init__(self, path: str, tif: tifffile.TiffFile, series: tifffile.TiffPageSeries):
        self.path = path
        self.shape = tuple(int(s) for s in series.shape)
        self.dtype = np.dtype(series.dtype).newbyteorder(tif.byteorder)
        self.offset = series.dataoffset
        self.array: Any = None
        if self.offset is None:
            self.array = zarr.open_array(series.aszarr(level=0), mode="r")

    @property
    def unit(self) -> tuple[int, ...]:
        """The storage unit (native order) a read decodes whole: a page, tile or strip;
        ones for a memory map."""
        if self.array is None:
            return (1,) * len(self.shape)
        return tuple(int(c) for c in self.array.chunks)

    def read(self, box: Sequence[slice]) -> np.ndarray:
        try:
            if self.array is not None:
                return np.asarray(self.array[tuple(box)])
            return self._mapped(box)
        except MemoryError:
            raise
        except Exception as exc:  # a damaged tile or strip: zlib, codec or I/O errors
            raise SourceError(f"{self.path}: unreadable ({type(exc).__name__}: {exc})") from None

    def read_into(self, box: Sequence[slice], out: np.ndarray) -> None:
        """`read(box)` into `out` (native byte order), without an array of its own: an
        import task reuses one buffer for its blocks (engine/worker/importing.py)."""
        if self.array is not None:
            out[...] = self.read(box)
            return
        try:
            self._mapped(box, out)
        except MemoryError:
            raise
        except Exception as exc:
            raise SourceError(f"{self.path}: unreadable ({type(exc).__name__}: {exc})") from None

    def _mapped(self, box: Sequence[slice], into: np.ndarray | None = None) -> np.ndarray:
        """The box from memory maps of the series' bytes, at most MAP_WINDOW_BYTES of its
        first axis at a time: a page mapped and read counts in the process's resident
        memory until it is unmapped (a 128 MiB block read through one map showed as
        128 MiB more peak RSS of the worker)."""
        assert self.offset is not None
        box = (*box, *(slice(None),) * (len(self.shape) - len(box)))
        lo, hi, step = box[0].indices(self.shape[0])
        if step != 1:  # not what tasks read: the first axis whole, then the box
            lo, hi = 0, self.shape[0]
        take = (slice(None) if step == 1 else box[0], *box[1:])
        if into is None:
            shape = [len(range(*b.indices(n))) for b, n in zip(box, self.shape, strict=True)]
            into = np.empty(shape, self.dtype.newbyteorder("="))
        per = int(np.prod(self.shape[1:])) * self.dtype.itemsize  # bytes per first index
        window = hi - lo if step != 1 else max(1, MAP_WINDOW_BYTES // max(1, per))
        with open(self.path, "rb") as f:
            for at in range(lo, hi, max(1, window)):
                n = min(window, hi - at)
                offset = self.offset + at * per
                start = offset - offset % mmap.ALLOCATIONGRANULARITY
                with mmap.mmap(
                    f.fileno(), offset - start + n * per, access=mmap.ACCESS_READ, offset=start
                ) as mapped:
                    data = np.frombuffer(
                        mapped, self.dtype, n * per // self.dtype.itemsize, offset - start
                    ).reshape((n, *self.shape[1:]))
                    part = into[at - lo : at - lo + n] if step == 1 else into
                    np.copyto(part, data[take])
                    del data
        return into


class TiffSource:
    def __init__(self, spec: SourceSpec) -> None:
        self.spec = spec
        path = spec.path
        self.tif = open_tiff(path)
        try:
            series = pick_series(self.tif, path, spec.series)
            check_complete(path, series)
            self.reader = SeriesReader(path, self.tif, series)
            self.map: AxisMap = axis_map(path, series.axes, spec.axes, series.shape)
            info = SourceInfo(
                path=path,
                shape=self.map.shape(series.shape),
                dtype=str(self.reader.dtype.newbyteorder("=")),
                axes=self.map.axes,
                files=(path,),
                **tiff_metadata(self.tif, series, spec.series or 0, self.map.native),
            )
            self.info = complete_info(info, spec)
        except BaseException:
            self.tif.close()
            raise

    @property
    def read_unit(self) -> tuple[int, ...]:
        unit = self.reader.unit
        return tuple(unit[i] for i in self.map.order)

    def read(self, box: Sequence[slice]) -> np.ndarray:
        return self.map.to_ngff(self.reader.read(self.map.native_box(box)))

    def read_into(self, box: Sequence[slice], out: np.ndarray) -> None:
        if self.map.order != tuple(range(len(self.map.order))):
            out[...] = self.read(box)
            return
        self.reader.read_into(self.map.native_box(box), out)


def tiff_metadata(
    tif: tifffile.TiffFile, series: tifffile.TiffPageSeries, index: int, native: str
) -> dict[str, Any]:
    """Scale, units and channels (keys of SourceInfo) as the file states them."""
    ome_channels: tuple[Channel, ...] = ()
    if tif.is_ome and tif.ome_metadata:
        found = _ome(tif.ome_metadata, index)
        if found["scale"]:
            return found
        ome_channels = found["channels"]  # names without sizes: sizes from the tags below
    scale: dict[str, float] = {}
    units: dict[str, str] = {}
    channels: tuple[Channel, ...] = ()
    page = series.keyframe
    ij = tif.imagej_metadata if tif.is_imagej else None
    xy = _resolution(page)
    if ij is not None:
        unit = ngff_unit(ij.get("unit"))
        if xy is not None:
            scale.update(y=xy[1], x=xy[0])
            if unit:
                units.update(y=unit, x=unit)
        if "spacing" in ij and "z" in native:
            scale["z"] = float(ij["spacing"])
            if unit:
                units["z"] = unit
        if ij.get("finterval") and "t" in native:
            scale["t"], units["t"] = float(ij["finterval"]), "second"
        luts = ij.get("LUTs")
        if luts:
            channels = tuple(
                Channel(
                    None, "{:02X}{:02X}{:02X}".format(*(int(v) for v in np.asarray(lut)[:, -1]))
                )
                for lut in luts
            )
    elif xy is not None:
        scale.update(y=xy[1], x=xy[0])
        unit_um = (
            RESOLUTION_UNIT_UM.get(int(page.tags["ResolutionUnit"].value or 1))
            if ("ResolutionUnit" in page.tags)
            else None
        )
        if unit_um is not None:
            scale.update(y=xy[1] * unit_um, x=xy[0] * unit_um)
            units.update(y="micrometer", x="micrometer")
    return {"scale": scale, "units": units, "channels": ome_channels or channels}


def _resolution(page: Any) -> tuple[float, float] | None:
    """Pixel size (x, y) in the resolution unit from XResolution/YResolution; None when
    absent or the meaningless default 1/1."""
    sizes = []
    for name in ("XResolution", "YResolution"):
        tag = page.tags.get(name)
        if tag is None:
            return None
        num, den = tag.value if isinstance(tag.value, tuple) else (tag.value, 1)
        if not num:
            return None
        sizes.append(float(den) / float(num))
    if sizes == [1.0, 1.0]:
        return None
    return sizes[0], sizes[1]


def _ome(xml: str, index: int) -> dict[str, Any]:
    try:
        ome = tifffile.xml2dict(xml)["OME"]
    except Exception:  # a broken OME-XML: fall back to the other tags
        return {"scale": {}, "units": {}, "channels": ()}
    images = ome.get("Image", [])
    images = images if isinstance(images, list) else [images]
    if index >= len(images):
        return {"scale": {}, "units": {}, "channels": ()}
    pixels = images[index].get("Pixels", {})
    scale: dict[str, float] = {}
    units: dict[str, str] = {}
    for axis in "zyx":
        key = f"PhysicalSize{axis.upper()}"
        if key in pixels:
            scale[axis] = float(pixels[key])
            unit = ngff_unit(pixels.get(f"{key}Unit", "µm"))
            if unit:
                units[axis] = unit
    if "TimeIncrement" in pixels:
        scale["t"] = float(pixels["TimeIncrement"])
        unit = ngff_unit(pixels.get("TimeIncrementUnit", "s"))
        if unit:
            units["t"] = unit
    raw = pixels.get("Channel", [])
    raw = raw if isinstance(raw, list) else [raw]
    channels = tuple(
        Channel(
            str(c["Name"]) if c.get("Name") is not None else None,
            color_hex(c["Color"]) if "Color" in c else None,
        )
        for c in raw
    )
    return {"scale": scale, "units": units, "channels": channels}
