"""Per-object measurements of a label image, exact across chunk borders.

An object may span many chunks, so each chunk reports, per label it holds, partial
sums that combine exactly: voxel count, sum of voxel coordinates, bounding-box
min/max, and (with an intensity image) intensity sum/min/max. The engine measures
each chunk (`measure_block`), combines the partials of all chunks on the driver
(`combine_partials`: sort by label, reduce), and turns the result into columns named
as ``skimage.measure.regionprops_table`` names them (`table_columns`). Only one row
per (chunk, label) ever leaves a worker, so the driver's memory grows with the number
of objects (times the chunks each touches), never with the voxel count.

Coordinates are integer sums (exact); integer intensities are summed as int64 (exact,
so `intensity_mean` equals scikit-image's); float intensities are summed in float64
(scikit-image sums float32 images in float32, so means agree to float32 precision).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from pydantic import Field

from tasks.spec import Params, table_op

Partial = dict[str, np.ndarray]
COORD_KEYS = ("sum", "min", "max")
INTENSITY_KEYS = ("isum", "imin", "imax")


class MeasureParams(Params):
    """`intensity`: 'image' (the input image, channel `channel`), an earlier step's name,
    or absent for shape measurements only."""

    intensity: str | None = None
    channel: int | None = Field(default=None, ge=0)


def empty_partial(ndim: int, intensity_dtype: np.dtype | None = None) -> Partial:
    part: Partial = {
        "label": np.zeros(0, dtype=np.uint64),
        "count": np.zeros(0, dtype=np.int64),
        **{k: np.zeros((0, ndim), dtype=np.int64) for k in COORD_KEYS},
    }
    if intensity_dtype is not None:
        sum_dtype = _sum_dtype(np.dtype(intensity_dtype))
        part["isum"] = np.zeros(0, dtype=sum_dtype)
        part["imin"] = np.zeros(0, dtype=intensity_dtype)
        part["imax"] = np.zeros(0, dtype=intensity_dtype)
    return part


def _sum_dtype(dtype: np.dtype) -> np.dtype:
    if dtype == np.bool_ or np.issubdtype(dtype, np.integer):
        return np.dtype(np.int64)
    return np.dtype(np.float64)


def group_starts(sorted_ids: np.ndarray) -> np.ndarray:
    """Index of the first element of each run of equal values in a sorted array."""
    if len(sorted_ids) == 0:
        return np.zeros(0, dtype=np.intp)
    return np.flatnonzero(np.concatenate([[True], sorted_ids[1:] != sorted_ids[:-1]]))


def measure_block(
    labels: np.ndarray,
    intensity: np.ndarray | None = None,
    offset: Sequence[int] | None = None,
) -> Partial:
    """Partial measurements of every non-zero label in one block, sorted by label.

    `offset` is the block's position (added to coordinates, so they are global).

    Works on runs (stretches of one label along a row of the last axis), not voxels:
    a nucleus row is tens of voxels, so sorting and reducing runs is several times
    cheaper than per voxel (15 ms against 46 ms on a 64x256x256 chunk of the sample),
    and a run's coordinate sum and extent along the row are exact integer formulas.
    """
    ndim = labels.ndim
    origin = np.zeros(ndim, dtype=np.int64) if offset is None else np.asarray(offset, np.int64)
    if intensity is not None and intensity.shape != labels.shape:
        raise ValueError(f"intensity shape {intensity.shape} differs from labels {labels.shape}")
    if intensity is not None and intensity.dtype == np.bool_:
        intensity = intensity.astype(np.uint8)
    empty = empty_partial(ndim, None if intensity is None else intensity.dtype)
    if labels.size == 0:
        return empty
    flat = labels.reshape(-1)
    edges = np.empty(flat.size, dtype=bool)
    edges[0] = True
    np.not_equal(flat[1:], flat[:-1], out=edges[1:])
    edges[:: labels.shape[-1]] = True  # a run never continues into the next row
    first = np.flatnonzero(edges)
    length = np.diff(np.append(first, flat.size))
    ids = flat[first]
    keep = np.flatnonzero(ids)  # runs of labelled voxels, in position order
    if len(keep) == 0:
        return empty
    by_label = np.argsort(ids[keep], kind="stable")
    order = keep[by_label]
    in_position = length[keep].astype(np.int64)
    ids, start, length = ids[order], first[order], in_position[by_label]
    groups = group_starts(ids)
    count = np.add.reduceat(length, groups)
    *row_axes, along = (c.astype(np.int64) for c in np.unravel_index(start, labels.shape))
    last = along + length - 1
    sums = [np.add.reduceat(c * length, groups) for c in row_axes]
    sums.append(np.add.reduceat(along * length + length * (length - 1) // 2, groups))
    part: Partial = {
        "label": ids[groups].astype(np.uint64),
        "count": count,
        "sum": np.stack(sums, axis=1) + count[:, None] * origin,
        "min": np.stack([np.minimum.reduceat(c, groups) for c in [*row_axes, along]], axis=1)
        + origin,
        "max": np.stack([np.maximum.reduceat(c, groups) for c in [*row_axes, last]], axis=1)
        + origin,
    }
    if intensity is not None:
        # the labelled voxels' values only: there the runs (in position order) start
        # at the running sum of their lengths
        values = intensity.reshape(-1)[flat != 0]
        runs = np.zeros(len(keep), dtype=np.int64)
        np.cumsum(in_position[:-1], out=runs[1:])
        for key, ufunc in (("isum", np.add), ("imin", np.minimum), ("imax", np.maximum)):
            dtype = _sum_dtype(values.dtype) if key == "isum" else None
            per_run = ufunc.reduceat(values, runs, dtype=dtype)[by_label]
            part[key] = ufunc.reduceat(per_run, groups)
    return part


def combine_partials(parts: Sequence[Partial]) -> Partial:
    """One row per label from the rows of many blocks (any order, any count per label)."""
    parts = [p for p in parts if p is not None]
    if not parts:
        raise ValueError("no partial measurements to combine")
    if len(parts) == 1:
        return parts[0]
    merged = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    order = np.argsort(merged["label"], kind="stable")
    merged = {k: v[order] for k, v in merged.items()}
    starts = group_starts(merged["label"])
    if len(starts) == len(order):
        return merged
    out: Partial = {"label": merged["label"][starts]}
    for key, values in merged.items():
        if key == "label":
            continue
        if key in ("count", "sum", "isum"):
            out[key] = np.add.reduceat(values, starts, axis=0)
        elif key in ("min", "imin"):
            out[key] = np.minimum.reduceat(values, starts, axis=0)
        else:
            out[key] = np.maximum.reduceat(values, starts, axis=0)
    return out


def column_names(ndim: int, intensity: bool) -> list[str]:
    """Feature columns in table order (the label itself is the table's index)."""
    names = ["area"]
    names += [f"centroid-{i}" for i in range(ndim)]
    names += [f"bbox-{i}" for i in range(2 * ndim)]
    if intensity:
        names += ["intensity_mean", "intensity_min", "intensity_max", "intensity_sum"]
    names += ["volume"]
    names += [f"centroid_physical-{i}" for i in range(ndim)]
    return names


def table_columns(
    part: Partial, scale: Sequence[float], translation: Sequence[float]
) -> tuple[np.ndarray, list[str], np.ndarray]:
    """(labels, column names, float64 matrix) of the final table from combined partials.

    Pixel columns as regionprops_table (centroid = mean coordinate, bbox = min and
    max + 1 per axis); `volume` = area times the voxel volume (axis unit cubed);
    `centroid_physical-i` = centroid times scale plus translation (NGFF: voxel centres).
    """
    ndim = part["sum"].shape[1]
    count = part["count"].astype(np.float64)
    centroid = part["sum"] / count[:, None]
    columns = [count[:, None], centroid, part["min"], part["max"] + 1]
    intensity = "isum" in part
    if intensity:
        columns += [
            (part["isum"] / count)[:, None],
            part["imin"][:, None],
            part["imax"][:, None],
            part["isum"][:, None],
        ]
    scale_arr = np.asarray(scale, dtype=np.float64)
    columns += [
        (count * float(np.prod(scale_arr)))[:, None],
        centroid * scale_arr + np.asarray(translation, dtype=np.float64),
    ]
    matrix = np.concatenate([np.asarray(c, dtype=np.float64) for c in columns], axis=1)
    return part["label"], column_names(ndim, intensity), matrix


MEASURE = table_op(
    "measure",
    "1",
    MeasureParams,
    "Per-object table of a label step: area, centroid, bbox, intensity mean/min/max/sum, "
    "physical volume and centroid; output kind 'table'.",
)
