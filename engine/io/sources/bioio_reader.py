"""Anything a bioio reader plugin opens (CZI, ND2, LIF, ...), when bioio and the plugin
are installed (they are not dependencies of the engine). bioio gives TCZYX with physical
pixel sizes in micrometers; a box is read through its dask array, one box at a time."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from engine.io.sources.base import Channel, SourceError, SourceInfo, SourceSpec, complete_info


class BioioSource:
    def __init__(self, spec: SourceSpec) -> None:
        try:
            from bioio import BioImage
        except ImportError:
            raise SourceError(
                f"{spec.path}: not a TIFF, folder of planes or HDF5 file; other formats need "
                "bioio and its reader plugin (pip install bioio bioio-czi, ...)"
            ) from None
        try:
            image = BioImage(spec.path)
            if spec.series is not None:
                image.set_scene(spec.series)
            data = image.dask_data  # TCZYX, lazy
        except Exception as exc:
            raise SourceError(f"{spec.path}: bioio cannot read it ({exc})") from None
        self.data = data
        sizes = image.physical_pixel_sizes
        scale = {a: float(v) for a, v in zip("zyx", (sizes.Z, sizes.Y, sizes.X), strict=True) if v}
        names = list(image.channel_names or [])
        info = SourceInfo(
            path=spec.path,
            shape=tuple(int(s) for s in data.shape),
            dtype=str(np.dtype(data.dtype)),
            axes="tczyx",
            scale=scale,
            units={a: "micrometer" for a in scale},
            channels=tuple(Channel(str(n)) for n in names),
            files=(spec.path,),
        )
        self.info = complete_info(info, spec)

    @property
    def read_unit(self) -> tuple[int, ...]:
        return tuple(int(c[0]) for c in self.data.chunks)

    def read(self, box: Sequence[slice]) -> np.ndarray:
        return np.asarray(self.data[tuple(box)].compute(scheduler="synchronous"))
