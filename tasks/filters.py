"""Local smoothing filters. Output equals scipy on the whole array (mode 'reflect')
as long as the engine gives each block its halo."""

from __future__ import annotations

from typing import Literal

import numpy as np
import scipy
from pydantic import Field, field_validator

from tasks.spec import LENGTH_UNITS_IN_MICROMETER, Context, OpSpec, Params, check_each, per_axis


class GaussianParams(Params):
    sigma: float | list[float]
    units: str = "pixel"
    truncate: float = Field(default=4.0, gt=0)

    @field_validator("sigma")
    @classmethod
    def _positive(cls, sigma: float | list[float]) -> float | list[float]:
        return check_each(sigma, lambda s: s > 0, "sigma must be greater than 0")


def gaussian_sigma_pixels(params: GaussianParams, ctx: Context) -> tuple[float, ...]:
    sigma = per_axis(params.sigma, len(ctx.spacing), "sigma")
    if params.units == "pixel":
        return sigma
    if params.units not in LENGTH_UNITS_IN_MICROMETER:
        known = ", ".join(["pixel", *LENGTH_UNITS_IN_MICROMETER])
        raise ValueError(f"units '{params.units}' is not one of {known}")
    factor = LENGTH_UNITS_IN_MICROMETER[params.units]
    return tuple(s * factor / sp for s, sp in zip(sigma, ctx.spacing, strict=True))


def _gaussian_halo(params: GaussianParams, ctx: Context) -> tuple[int, ...]:
    # scipy's kernel radius: int(truncate * sigma + 0.5)
    return tuple(int(params.truncate * s + 0.5) for s in gaussian_sigma_pixels(params, ctx))


def gaussian(block: np.ndarray, params: GaussianParams, ctx: Context, value: None = None):
    sigma = gaussian_sigma_pixels(params, ctx)
    return scipy.ndimage.gaussian_filter(
        block.astype(np.float32, copy=False), sigma, mode="reflect", truncate=params.truncate
    )


def gaussian_cropped(
    block: np.ndarray,
    params: GaussianParams,
    ctx: Context,
    value: None,
    keep: tuple[slice, ...],
) -> np.ndarray:
    """`gaussian(block)[keep]`, bit for bit, in less time: scipy filters one axis after
    the other (in float32 between axes), and once an axis is filtered its halo is no
    longer needed, so each pass drops it before the next runs on a smaller block."""
    sigma = gaussian_sigma_pixels(params, ctx)
    out = block.astype(np.float32, copy=False)
    for axis, (s, cut) in enumerate(zip(sigma, keep, strict=True)):
        out = scipy.ndimage.gaussian_filter1d(
            out, s, axis=axis, mode="reflect", truncate=params.truncate
        )
        out = out[(slice(None),) * axis + (cut,)]
    return out


GAUSSIAN = OpSpec(
    name="gaussian",
    version="1",
    params=GaussianParams,
    kind=lambda p: "blockwise",
    halo=_gaussian_halo,
    dtype=lambda p, dtype: np.dtype(np.float32),
    apply=gaussian,
    apply_cropped=gaussian_cropped,
    doc="Gaussian smoothing in float32; sigma in pixels or in a length unit.",
)


class MedianParams(Params):
    size: int | list[int] = Field(default=3)
    mode: Literal["reflect"] = "reflect"


def _median_size(params: MedianParams, ndim: int) -> tuple[int, ...]:
    size = tuple(int(s) for s in per_axis(params.size, ndim, "size"))
    if any(s < 1 for s in size):
        raise ValueError("size must be at least 1")
    return size


def _median_halo(params: MedianParams, ctx: Context) -> tuple[int, ...]:
    return tuple(s // 2 for s in _median_size(params, len(ctx.spacing)))


def median(block: np.ndarray, params: MedianParams, ctx: Context, value: None = None):
    return scipy.ndimage.median_filter(block, size=_median_size(params, block.ndim), mode="reflect")


MEDIAN = OpSpec(
    name="median",
    version="1",
    params=MedianParams,
    kind=lambda p: "blockwise",
    halo=_median_halo,
    dtype=lambda p, dtype: np.dtype(dtype),
    apply=median,
    doc="Median filter over a box of `size` voxels per axis.",
)
