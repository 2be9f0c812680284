"""Writing only where an object's mask is (Fractal's `use_masks`, ngio's masked images).

A masking ROI table (`type: masking_roi_table`, `region: ../labels/<name>`) has one row
per object of a label image: its bounding box. A step run per object reads and computes
that box, as any ROI; `MaskedWrite` then keeps its result only where the label image
holds that object's id, and puts back what the outputs held elsewhere in the box, so one
object's result never overwrites another's (two touching objects share box voxels, not
mask voxels). The pyramid levels above level 0 are made again over the box from the
level below (every f-th voxel for labels, the mean for images, as the engine makes them).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import zarr

from engine.core.errors import ConfigError
from engine.core.geometry import Roi
from engine.io.downsample import block_mean
from engine.io.metadata import ImageMeta, read_image


@dataclass
class MaskedWrite:
    """Around one object's run: `before()` keeps the outputs' level-0 voxels in the box,
    `after()` keeps the run's result inside the mask only and redoes the pyramid."""

    image: str
    region: str  # the label image's name (labels/<region>)
    label: int
    box: Roi  # level-0 index box over the image's axes
    outputs: list[str]  # output paths ("labels/x", "results/y")
    kept: dict[str, np.ndarray | None] = field(default_factory=dict)

    def before(self) -> None:
        for out in self.outputs:
            path = Path(self.image) / out
            if not path.exists():
                self.kept[out] = None  # made by this run: zeros outside the mask
                continue
            array = _level0(path)
            self.kept[out] = np.asarray(array[self._box(array)])

    def after(self) -> None:
        mask = self._mask()
        for out in self.outputs:
            path = Path(self.image) / out
            array = _level0(path, mode="r+")
            where = self._box(array)
            new = np.asarray(array[where])
            old = self.kept.get(out)
            old = np.zeros_like(new) if old is None else old.astype(new.dtype)
            inside = mask.reshape(new.shape) if mask.size == new.size else None
            if inside is None:
                raise ConfigError(
                    f"masking: {out} has shape {array.shape}, labels/{self.region} another; "
                    "the mask must cover the output voxel for voxel"
                )
            array[where] = np.where(inside, new, old)
            _redo_pyramid(path, self.box, out.startswith("labels/"))

    def _box(self, array: zarr.Array) -> tuple[slice, ...]:
        """The box on an output's level 0 (outputs drop the channel axis)."""
        box = [slice(int(a), int(b)) for a, b in zip(self.box.start, self.box.stop, strict=True)]
        return tuple(box[len(box) - array.ndim :])

    def _mask(self) -> np.ndarray:
        path = Path(self.image) / "labels" / self.region
        array = _level0(path)
        return np.asarray(array[self._box(array)]) == self.label


def _level0(path: Path, mode: str = "r") -> zarr.Array:
    meta: ImageMeta = read_image(path, validate=False)
    return zarr.open_array(str(path / meta.levels[0].path), mode=mode)


def _redo_pyramid(path: Path, box: Roi, labels: bool) -> None:
    """Levels 1.. of an output over `box` (level-0 indices), each from the level below."""
    meta = read_image(path, validate=False)
    offset = len(box.start) - len(meta.axes)
    start = [int(a) for a in box.start[offset:]]
    stop = [int(b) for b in box.stop[offset:]]
    for lower, upper in zip(meta.levels, meta.levels[1:], strict=False):
        factors = [max(1, round(u / lo)) for lo, u in zip(lower.scale, upper.scale, strict=True)]
        start = [a // f for a, f in zip(start, factors, strict=True)]
        stop = [
            min(math.ceil(b / f), s) for b, f, s in zip(stop, factors, upper.shape, strict=True)
        ]
        source = zarr.open_array(str(path / lower.path), mode="r")
        read = tuple(
            slice(a * f, min(b * f, s))
            for a, b, f, s in zip(start, stop, factors, lower.shape, strict=True)
        )
        data = np.asarray(source[read])
        if labels:
            small = data[tuple(slice(None, None, f) for f in factors)]
        else:
            small = block_mean(data, factors)
        target = zarr.open_array(str(path / upper.path), mode="r+")
        target[tuple(slice(a, b) for a, b in zip(start, stop, strict=True))] = small
