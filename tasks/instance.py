"""Instance segmentation by any per-block segmenter, stitched across chunk borders.

A segmenter (the built-in seeded watershed, or a user's `module:function`, e.g. a
model) sees each chunk grown by an overlap and returns instance labels for it. The
engine keeps each chunk's labels of its own voxels, numbered by `number_core`, and
the band of labels it saw around each border. Where two chunks meet, both segmented
the same band; `matching_pairs` pairs the objects whose views there agree (IoU at or
above a threshold), and the label pass's union-find (`tasks.label.resolve_components`)
turns the pairs into globally unique, consecutive ids.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import scipy
import skimage
from pydantic import Field, field_validator, model_validator

from tasks.function import load_function
from tasks.spec import Context, OpSpec, Params, check_each, per_axis

WATERSHED = "watershed"


class InstanceParams(Params):
    segmenter: str = WATERSHED
    overlap: int | list[int] = 16
    iou_threshold: float = Field(default=0.5, gt=0, le=1)
    min_distance: int = Field(default=5, ge=1)
    kwargs: dict[str, Any] = Field(default_factory=dict)

    @field_validator("segmenter")
    @classmethod
    def _known_segmenter(cls, segmenter: str) -> str:
        if segmenter == WATERSHED:
            return segmenter
        if ":" not in segmenter:
            raise ValueError(
                f"unknown segmenter '{segmenter}' (built in: {WATERSHED}; "
                "or a function as 'module:function')"
            )
        load_function(segmenter)
        return segmenter

    @field_validator("overlap")
    @classmethod
    def _positive(cls, overlap: int | list[int]) -> int | list[int]:
        rule = "overlap must be at least 1 voxel: chunks are matched by a band both segmented"
        return check_each(overlap, lambda v: v >= 1, rule)

    @model_validator(mode="after")
    def _params_fit_segmenter(self) -> InstanceParams:
        if self.segmenter == WATERSHED and self.kwargs:
            raise ValueError("kwargs are for a 'module:function' segmenter, not watershed")
        if self.segmenter != WATERSHED and "min_distance" in self.model_fields_set:
            raise ValueError("min_distance is a watershed parameter; pass kwargs to a function")
        return self


def overlap_voxels(params: InstanceParams, ctx: Context) -> tuple[int, ...]:
    """Per spatial axis, how far past its chunk each segmentation sees (the op's halo)."""
    return tuple(int(v) for v in per_axis(params.overlap, len(ctx.spacing), "overlap"))


def seeded_watershed(mask: np.ndarray, min_distance: int, spacing: tuple[float, ...]):
    """Nuclei of a foreground mask: watershed of the distance transform from its maxima.

    Every connected component gets at least its highest point as a seed, so every
    foreground voxel ends up in an object. Peaks at the block border are kept: a
    block's border is not the image's.
    """
    mask = mask > 0
    distance = scipy.ndimage.distance_transform_edt(mask, sampling=spacing)
    components, _ = scipy.ndimage.label(mask)
    peaks = skimage.feature.peak_local_max(
        distance, min_distance=min_distance, labels=components, exclude_border=False
    )
    markers = np.zeros(mask.shape, dtype=np.int32)
    markers[tuple(peaks.T)] = np.arange(1, len(peaks) + 1)
    return skimage.segmentation.watershed(-distance, markers, mask=mask)


def segment(block: np.ndarray, params: InstanceParams, ctx: Context, value: None = None):
    """Instance labels of one block (any non-negative integer ids; 0 is background)."""
    if params.segmenter == WATERSHED:
        return seeded_watershed(block, params.min_distance, ctx.spacing)
    labels = np.asarray(load_function(params.segmenter)(block, **params.kwargs))
    if labels.shape != block.shape:
        raise ValueError(
            f"{params.segmenter} returned shape {labels.shape} for a block of shape {block.shape}"
        )
    if not (np.issubdtype(labels.dtype, np.integer) or labels.dtype == np.bool_):
        raise ValueError(f"{params.segmenter} returned {labels.dtype}, not integer labels")
    return labels


def number_core(labels: np.ndarray, core: tuple[slice, ...]) -> tuple[np.ndarray, int]:
    """Objects present in the `core` part of `labels` as 1..n (in id order), all else 0.

    Only objects of the chunk's own voxels get a provisional id: one the segmenter
    found in the overlap alone belongs to a neighbour, which numbers it itself.
    """
    ids = np.unique(labels[core])
    ids = ids[ids != 0]
    if len(ids) == 0:
        return np.zeros(labels.shape, dtype=np.uint32), 0
    position = np.minimum(np.searchsorted(ids, labels), len(ids) - 1)
    hit = (ids[position] == labels) & (labels != 0)
    return np.where(hit, position + 1, 0).astype(np.uint32), len(ids)


def matching_pairs(low: np.ndarray, high: np.ndarray, threshold: float) -> np.ndarray:
    """Pairs (id in `low`, id in `high`) of two segmentations of the same band whose
    objects there have an intersection over union of at least `threshold`.

    Both ids are small provisional ones (1..n of one chunk). The IoU counts voxels
    in the band only: that is the part of an object both chunks saw.
    """
    low = low.ravel().astype(np.int64)
    high = high.ravel().astype(np.int64)
    area_low, area_high = np.bincount(low), np.bincount(high)
    both = (low != 0) & (high != 0)
    keys, inter = np.unique(low[both] * len(area_high) + high[both], return_counts=True)
    a, b = np.divmod(keys, len(area_high))
    iou = inter / (area_low[a] + area_high[b] - inter)
    keep = iou >= threshold
    return np.stack([a[keep], b[keep]], axis=1).astype(np.uint64)


INSTANCE = OpSpec(
    name="instance",
    version="1",
    params=InstanceParams,
    kind=lambda p: "global",
    halo=overlap_voxels,
    dtype=lambda p, dtype: np.dtype(np.uint32),
    apply=segment,
    doc="Instance labels by a per-block segmenter (seeded watershed or `module:function`) "
    "run with overlap, merged across chunk borders by IoU into consecutive ids.",
)
