"""Writing the synthetic nuclei sample as a real OME-Zarr image on disk.

The image gets a small pyramid and its true instance labels as `labels/truth`,
so every command and test has a realistic input without downloads. It also holds
the ROIs `train` and `test` (an ROI table, `tables/rois`) and sparse scribbles
inside `train` as `labels/annotations` (1 = background, 2 = nucleus).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import zarr

from engine.core.errors import EngineError
from engine.core.geometry import Roi
from engine.io.downsample import block_mean
from engine.io.metadata import Axis, Version, read_image
from engine.io.ngff_write import (
    LevelSpec,
    create_image,
    image_label_json,
    list_in_parent,
    set_engine_attrs,
    zarr_format,
)
from engine.io.roi_tables import box_to_micrometer, write_rois
from engine.io.sample_image import make_annotations, make_nuclei, sample_rois

SPACING_UM = {"z": 1.0, "y": 0.5, "x": 0.5}


def sample_levels(
    shape: tuple[int, ...], chunks: tuple[int, ...], names: tuple[str, ...], n_levels: int = 3
) -> list[LevelSpec]:
    """Levels downsampled by 2 in y and x (z kept: it is already coarser)."""
    levels = []
    factors = tuple(1 if n == "z" else 2 for n in names)
    current = shape
    for k in range(n_levels):
        scale = tuple(SPACING_UM[n] * f**k for n, f in zip(names, factors, strict=True))
        levels.append(
            LevelSpec(
                f"s{k}",
                current,
                tuple(min(c, s) for c, s in zip(chunks, current, strict=True)),
                scale,
                (0.0,) * len(shape),
            )
        )
        current = tuple(-(-s // f) for s, f in zip(current, factors, strict=True))
        if min(current) < 1 or any(s < 8 for s, f in zip(current, factors, strict=True) if f > 1):
            break
    return levels


def write_sample(
    path: str | Path,
    shape: tuple[int, ...] = (128, 512, 512),
    chunks: tuple[int, ...] | None = None,
    version: Version = "0.5",
    seed: int = 0,
) -> str:
    path = Path(path)
    if path.exists():
        raise EngineError(f"{path} already exists; choose a new path for the sample")
    if len(shape) not in (2, 3):
        raise EngineError(f"--shape needs 2 or 3 sizes (Y,X or Z,Y,X), got {len(shape)}")
    chunks = chunks or tuple(
        min(s, c) for s, c in zip(shape, (64, 256, 256)[-len(shape) :], strict=True)
    )
    if len(chunks) != len(shape) or any(c < 1 for c in chunks):
        raise EngineError(f"--chunks {chunks} does not fit --shape {shape}")
    try:
        sample = make_nuclei(shape, seed)
    except ValueError as exc:
        raise EngineError(f"sample: {exc}") from None
    names = ("z", "y", "x")[-len(shape) :]
    axes = tuple(Axis(n, "space", "micrometer") for n in names)
    levels = sample_levels(shape, chunks, names)
    root = zarr.open_group(str(path), mode="w", zarr_format=zarr_format(version))
    create_image(root, "", version=version, axes=axes, levels=levels, dtype="uint16", name="nuclei")

    def label_image(name: str, dtype: str) -> zarr.Group:
        group = create_image(
            root,
            f"labels/{name}",
            version=version,
            axes=axes,
            levels=levels,
            dtype=dtype,
            name=name,
            method="nearest",
            extra_ome=image_label_json(version),
        )
        list_in_parent(root, "label", name, version)
        return group

    truth = label_image("truth", "uint32")
    set_engine_attrs(truth, {"sample": {"seed": seed, "shape": list(shape)}})
    boxes = sample_rois(shape)
    annotations = label_image("annotations", "uint8")
    set_engine_attrs(
        annotations,
        {"sample": {"seed": seed, "roi": "train", "classes": {"background": 1, "nucleus": 2}}},
    )
    scribbles = make_annotations(sample.truth, boxes["train"], seed)
    image, labels = sample.image, sample.truth
    for k, level in enumerate(levels):
        if k:
            factors = tuple(
                round(b / a) for a, b in zip(levels[k - 1].scale, level.scale, strict=True)
            )
            image = block_mean(image, factors)
            labels = labels[tuple(slice(None, None, f) for f in factors)]
            scribbles = scribbles[tuple(slice(None, None, f) for f in factors)]
        root[level.path][...] = image
        truth[level.path][...] = np.ascontiguousarray(labels)
        annotations[level.path][...] = np.ascontiguousarray(scribbles)
    meta = read_image(path)
    write_rois(
        root,
        {
            name: box_to_micrometer(
                meta, Roi(tuple(s.start for s in box), tuple(s.stop for s in box), 0)
            )
            for name, box in boxes.items()
        },
    )
    return str(path)
