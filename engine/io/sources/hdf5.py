"""One dataset of an HDF5 file (h5py), e.g. `t00000/s00/0/cells` of a BigDataViewer `.h5`.

A box is one hyperslab read: h5py decodes only the HDF5 chunks it meets. Axis names come
from --axes, else the dataset's `axes` attribute (a string such as "zyx", as ilastik and
others write) or its dimension labels (h5py `dims`); physical sizes from the
`element_size_um` attribute (Fiji's HDF5 plugin and ilastik write it, one value per axis).
BigDataViewer keeps its voxel size in the XML next to the `.h5`: give it with --scale.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import h5py
import numpy as np

from engine.io.sources.base import (
    AxisMap,
    SourceError,
    SourceInfo,
    SourceSpec,
    axis_map,
    complete_info,
)


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, np.ndarray):
        return "".join(_text(v) for v in value.ravel())
    return str(value)


class Hdf5Source:
    def __init__(self, spec: SourceSpec) -> None:
        path = spec.path
        if not os.path.exists(path):
            raise SourceError(f"{path}: no such file")
        try:
            self.file = h5py.File(path, "r")
        except OSError as exc:
            raise SourceError(f"{path}: not a readable HDF5 file ({exc})") from None
        try:
            self.dataset = self._dataset(spec)
            native = self._native_axes(self.dataset)
            if native is None and spec.axes is None:
                ndim = self.dataset.ndim
                example = ("tczyx" if ndim > 3 else "zyx")[-ndim:]
                raise SourceError(
                    f"{path}:{self.dataset.name}: its axes are not named (no 'axes' attribute "
                    f"or dimension labels); give --axes, e.g. --axes {example}"
                )
            self.map: AxisMap = axis_map(
                f"{path}:{self.dataset.name}", native or "", spec.axes, self.dataset.shape
            )
            scale, units = self._sizes(self.map.native)
            info = SourceInfo(
                path=path,
                shape=self.map.shape(self.dataset.shape),
                dtype=str(np.dtype(self.dataset.dtype).newbyteorder("=")),
                axes=self.map.axes,
                scale=scale,
                units=units,
                files=(path,),
            )
            self.info = complete_info(info, spec)
        except BaseException:
            self.file.close()
            raise

    def _dataset(self, spec: SourceSpec) -> h5py.Dataset:
        datasets: list[str] = []
        self.file.visititems(
            lambda name, obj: datasets.append(name) if isinstance(obj, h5py.Dataset) else None
        )
        if spec.dataset is None:
            if len(datasets) != 1:
                listing = ", ".join(datasets[:8]) + (" ..." if len(datasets) > 8 else "")
                raise SourceError(
                    f"{spec.path}: holds {len(datasets)} datasets ({listing or 'none'}); "
                    "give --dataset PATH"
                )
            return self.file[datasets[0]]
        found = self.file.get(spec.dataset)
        if not isinstance(found, h5py.Dataset):
            raise SourceError(
                f"{spec.path}: no dataset '{spec.dataset}' (datasets: "
                f"{', '.join(datasets[:8]) or 'none'})"
            )
        return found

    def _native_axes(self, dataset: h5py.Dataset) -> str | None:
        if "axes" in dataset.attrs:
            names = _text(dataset.attrs["axes"]).strip().lower()
            if len(names) == dataset.ndim:
                return names
        labels = [d.label for d in dataset.dims]
        if all(len(label) == 1 for label in labels):
            return "".join(labels).lower()
        return None

    def _sizes(self, native: str) -> tuple[dict[str, float], dict[str, str]]:
        attrs = self.dataset.attrs
        if "element_size_um" not in attrs:
            return {}, {}
        values = [float(v) for v in np.ravel(attrs["element_size_um"])]
        spatial = [a for a in native if a in "zyx"]
        if len(values) == len(native):
            pairs = zip(native, values, strict=True)
        elif len(values) == len(spatial):
            pairs = zip(spatial, values, strict=True)
        else:
            return {}, {}
        scale = {a: v for a, v in pairs if a in "zyx"}
        return scale, {a: "micrometer" for a in scale}

    @property
    def read_unit(self) -> tuple[int, ...]:
        chunks = self.dataset.chunks or (1,) * self.dataset.ndim
        return tuple(int(chunks[i]) for i in self.map.order)

    def read(self, box: Sequence[slice]) -> np.ndarray:
        try:
            data = self.dataset[self.map.native_box(box)]
        except (OSError, ValueError) as exc:
            raise SourceError(f"{self.info.path}:{self.dataset.name}: unreadable ({exc})") from None
        return self.map.to_ngff(np.asarray(data)).astype(self.info.dtype, copy=False)
