"""Pixel features of a block: scikit-image's `multiscale_basic_features`, chunk by chunk.

At every voxel kept, the values equal ``skimage.feature.multiscale_basic_features`` on
the whole image (bit for bit), as long as the block carries `FeatureSettings.halo()`
voxels around what is kept (clipped only at the image border, where the filters' own
boundary modes then act as they do on the whole). The halo is the Gaussian's reach at
the largest sigma, plus 1 voxel for the Sobel edges or 2 for the Hessian's two finite
differences.

The Gaussian must cover the whole block (that is what the halo is for), but edges and
Hessian eigenvalues are computed on the kept part only (grown by the 1 or 2 voxels their
differences need): the eigenvalues are most of the cost, and halo voxels are thrown away.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from itertools import combinations_with_replacement
from typing import Any

import numpy as np
import skimage

GAUSSIAN_TRUNCATE = 4.0  # skimage.filters.gaussian's default, which the features use


@dataclass(frozen=True)
class FeatureSettings:
    """The arguments of `multiscale_basic_features` (one channel); sigmas in pixels."""

    sigma_min: float = 0.5
    sigma_max: float = 8.0
    num_sigma: int | None = None
    intensity: bool = True
    edges: bool = True
    texture: bool = True

    def sigmas(self) -> np.ndarray:
        """As scikit-image picks them: powers of 2 from sigma_min unless num_sigma is set."""
        num = self.num_sigma
        if num is None:
            num = int(np.log2(self.sigma_max) - np.log2(self.sigma_min) + 1)
        return np.logspace(
            np.log2(self.sigma_min), np.log2(self.sigma_max), num=num, base=2, endpoint=True
        )

    def halo(self) -> int:
        """Voxels needed around a kept box on each side (as scipy sizes the kernel)."""
        radius = int(GAUSSIAN_TRUNCATE * float(self.sigmas().max()) + 0.5)
        return radius + (2 if self.texture else 1 if self.edges else 0)

    def count(self, ndim: int) -> int:
        per_sigma = int(self.intensity) + int(self.edges) + (ndim if self.texture else 0)
        return per_sigma * len(self.sigmas())

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def pixel_features(
    image: np.ndarray, settings: FeatureSettings, keep: Sequence[slice] | None = None
) -> np.ndarray:
    """Features of the voxels `keep` of `image` (all when None): shape kept + (n_features,),
    float32, in scikit-image's order (per sigma: intensity, edges, Hessian eigenvalues
    in decreasing order)."""
    keep = tuple(keep) if keep is not None else tuple(slice(0, n) for n in image.shape)
    img = np.ascontiguousarray(skimage.util.img_as_float32(image))
    columns: list[np.ndarray] = []
    for sigma in settings.sigmas():
        smooth = skimage.filters.gaussian(img, sigma=sigma, preserve_range=False)
        if settings.intensity:
            columns.append(smooth[keep])
        if settings.edges:
            grown, inner = _grown(keep, 1, smooth.shape)
            columns.append(skimage.filters.sobel(smooth[grown])[inner])
        if settings.texture:
            columns.extend(_hessian_eigenvalues(smooth, keep))
    return np.stack(columns, axis=-1)


def _hessian_eigenvalues(smooth: np.ndarray, keep: tuple[slice, ...]) -> list[np.ndarray]:
    """As skimage's texture filter: second differences by two np.gradient passes."""
    grown, inner = _grown(keep, 2, smooth.shape)
    part = smooth[grown]
    first = np.gradient(part)
    elems = [
        np.gradient(first[a], axis=b)[inner]
        for a, b in combinations_with_replacement(range(part.ndim), 2)
    ]
    return list(skimage.feature.hessian_matrix_eigvals(elems))


def _grown(
    keep: tuple[slice, ...], margin: int, shape: Sequence[int]
) -> tuple[tuple[slice, ...], tuple[slice, ...]]:
    """`keep` grown by `margin` within `shape`, and `keep` relative to that grown box."""
    grown, inner = [], []
    for s, n in zip(keep, shape, strict=True):
        start, stop, _ = s.indices(n)
        lo, hi = max(start - margin, 0), min(stop + margin, n)
        grown.append(slice(lo, hi))
        inner.append(slice(start - lo, stop - lo))
    return tuple(grown), tuple(inner)
