"""OME-Zarr images of a test's own data, written by the engine's NGFF writer. A module of
its own, not conftest's, so that the benchmarks can write their inputs without conftest's
side effects (its environment turns the warm engine and runs on threads off)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import zarr

from engine.io.metadata import Axis
from engine.io.ngff_write import LevelSpec, create_image, zarr_format


def write_image(
    path: Path,
    data: np.ndarray,
    chunks: tuple[int, ...],
    version: str = "0.5",
    names: tuple[str, ...] | None = None,
    scale: tuple[float, ...] | None = None,
    levels: int = 2,
) -> Path:
    """An OME-Zarr image of `data` with `levels` levels, downsampled by 2 in y and x."""
    names = names or ("z", "y", "x")[-data.ndim :]
    types = {"t": "time", "c": "channel"}
    axes = tuple(
        Axis(
            n, types.get(n, "space"), None if n == "c" else ("second" if n == "t" else "micrometer")
        )
        for n in names
    )
    scale = scale or tuple(1.0 for _ in names)
    specs, arrays, current = [], [], data
    for k in range(levels):
        factors = tuple(2**k if n in ("y", "x") else 1 for n in names)
        specs.append(
            LevelSpec(
                f"s{k}",
                current.shape,
                tuple(min(c, s) for c, s in zip(chunks, current.shape, strict=True)),
                tuple(s * f for s, f in zip(scale, factors, strict=True)),
                (0.0,) * data.ndim,
            )
        )
        arrays.append(current)
        step = tuple(2 if n in ("y", "x") else 1 for n in names)
        current = current[tuple(slice(None, None, s) for s in step)]
    root = zarr.open_group(str(path), mode="w", zarr_format=zarr_format(version))
    create_image(root, "", version=version, axes=axes, levels=specs, dtype=data.dtype, name="img")
    for spec, array in zip(specs, arrays, strict=True):
        root[spec.path][...] = array
    return path


def huge_image(path: Path) -> str:
    """Metadata only: 2048 x 65536 x 65536 uint16 (16 TiB), no chunk ever written."""
    root = zarr.open_group(str(path), mode="w", zarr_format=3)
    axes = tuple(Axis(n, "space", "micrometer") for n in "zyx")
    levels = [
        LevelSpec(
            f"s{k}",
            (2048, 65536 // 2**k, 65536 // 2**k),
            (64, 256, 256),
            (1.0, 2.0**k, 2.0**k),
            (0, 0, 0),
        )
        for k in range(3)
    ]
    create_image(root, "", version="0.5", axes=axes, levels=levels, dtype="uint16", name="huge")
    return str(path)
