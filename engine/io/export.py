"""An ROI of an image (or of a label image or result in it) as an OME-TIFF, for Fiji and
other desktop tools.

tifffile writes the OME-TIFF: axes as OME names them (TCZYX, those present), physical
pixel sizes and their units from the level's scale, channel names from `omero`, the
ROI's origin as the plane positions. The data goes plane by plane, read from the zarr
in slabs of one chunk depth, so the export holds a slab, not the ROI. It is written to
`OUT.partial` and renamed, so a failed export leaves no half-written TIFF at OUT.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tifffile
import zarr

from engine.core.errors import ConfigError, OutputConflict
from engine.core.geometry import Roi
from engine.core.pipeline import RoiSpec
from engine.io.metadata import ImageMeta, read_image
from engine.io.ngff_write import read_ome
from engine.io.rois import user_roi

OME_UNITS = {
    "angstrom": "Å",
    "nanometer": "nm",
    "micrometer": "µm",
    "millimeter": "mm",
    "centimeter": "cm",
    "meter": "m",
    "inch": "in",
    "second": "s",
    "millisecond": "ms",
    "minute": "min",
    "hour": "h",
}


@dataclass(frozen=True)
class Exported:
    path: str
    source: str
    roi: Roi
    shape: tuple[int, ...]
    axes: str
    physical_size: dict[str, tuple[float, str | None]]


def export(
    image: str | Path,
    out: str | Path,
    roi: str | RoiSpec | dict | None = None,
    labels: str | None = None,
    results: str | None = None,
    level: int = 0,
    overwrite: bool = False,
) -> Exported:
    """Write an ROI (a name from the image's ROI tables, `z0:z1,y0:y1,x0:x1` or
    `c=0:1,z=...` in pixels of `level`, or a RoiSpec) of the image, or of
    `labels/<labels>` or `results/<results>` in it, to the OME-TIFF `out`."""
    if labels is not None and results is not None:
        raise ConfigError("--labels and --results exclude each other")
    out = Path(out)
    if not out.name.lower().endswith((".ome.tif", ".ome.tiff")):
        raise ConfigError(f"{out}: an OME-TIFF's name ends in .ome.tif or .ome.tiff")
    if out.exists() and not overwrite:
        raise OutputConflict(f"{out} exists; use --overwrite to replace it")
    meta = read_image(image)
    target = meta
    sub = None
    if labels is not None or results is not None:
        sub = f"labels/{labels}" if labels is not None else f"results/{results}"
        if not (Path(meta.path) / sub).exists():
            raise ConfigError(f"{meta.path}: has no {sub}")
        target = read_image(Path(meta.path) / sub, validate=False)
    box = user_roi(roi, meta, level, text_level=level)  # text: pixels of this level
    keep = [i for i, a in enumerate(meta.axis_names) if a in target.axis_names]
    box = Roi(tuple(box.start[i] for i in keep), tuple(box.stop[i] for i in keep), level)
    lv = target.level(level)
    array = zarr.open_array(str(Path(target.path) / lv.path), mode="r")
    axes = "".join(a.upper() for a in target.axis_names)
    metadata: dict = {"axes": axes}
    sizes: dict[str, tuple[float, str | None]] = {}
    for i, axis in enumerate(target.axes):
        if axis.name in "zyx":
            unit = OME_UNITS.get(axis.unit or "")
            metadata[f"PhysicalSize{axis.name.upper()}"] = lv.scale[i]
            if unit is not None:
                metadata[f"PhysicalSize{axis.name.upper()}Unit"] = unit
            sizes[axis.name] = (lv.scale[i], axis.unit)
        elif axis.name == "t":
            metadata["TimeIncrement"] = lv.scale[i]
            if OME_UNITS.get(axis.unit or ""):
                metadata["TimeIncrementUnit"] = OME_UNITS[axis.unit or ""]
    names = _channel_names(target, sub is None)
    if names and "c" in target.axis_names:
        c = target.axis_names.index("c")
        metadata["Channel"] = {"Name": names[int(box.start[c]) : int(box.stop[c])]}
    shape = tuple(int(s) for s in box.shape)
    partial = out.parent / f".{out.name}.partial"
    try:
        tifffile.imwrite(
            partial,
            _planes(array, box),
            shape=shape,
            dtype=array.dtype,
            ome=True,
            bigtiff=int(np.prod(shape)) * array.dtype.itemsize > 2**31,
            photometric="minisblack",
            metadata=metadata,
        )
        os.replace(partial, out)
    finally:
        partial.unlink(missing_ok=True)
    return Exported(str(out), str(target.path), box, shape, axes.lower(), sizes)


def _channel_names(meta: ImageMeta, is_image: bool) -> list[str]:
    if not is_image:
        return []
    attrs = zarr.open_group(meta.path, mode="r").attrs.asdict()
    channels = read_ome(meta.version, attrs).get("omero", {}).get("channels", [])
    return [str(c.get("label", f"c{i}")) for i, c in enumerate(channels)]


def _planes(array: zarr.Array, box: Roi) -> Iterator[np.ndarray]:
    """The ROI's yx planes in C order of the leading axes, read a chunk deep at a time
    along the last leading axis."""
    lead = box.ndim - 2
    if lead == 0:
        yield np.asarray(array[box.to_slices()])
        return
    depth = int(array.chunks[lead - 1])
    slices = box.to_slices()
    outer = [range(int(box.start[a]), int(box.stop[a])) for a in range(lead - 1)]
    last = lead - 1
    for index in itertools.product(*outer):
        z0, stop = int(box.start[last]), int(box.stop[last])
        while z0 < stop:
            z1 = min((z0 // depth + 1) * depth, stop)
            yield from np.asarray(array[(*index, slice(z0, z1), *slices[-2:])])
            z0 = z1
