"""A unit of work of a collection run: one image and the ROI of it a run covers."""

from __future__ import annotations

from dataclasses import dataclass

from engine.core.geometry import Roi
from engine.io.plates import FieldImage
from engine.io.rois import UserRoi


@dataclass(frozen=True)
class Unit:
    """One image and the ROI of it a run covers (None: the whole image)."""

    image: FieldImage
    roi: UserRoi = None
    roi_name: str | None = None  # the row of an ROI table
    mask: tuple[str, int] | None = None  # masking ROI table: (label image, object id)
    box: Roi | None = None  # the ROI as an index box at the processing level, image axes
    channel_axis: int | None = None  # the image's

    @property
    def label(self) -> str:
        return self.image.label + (f" roi '{self.roi_name}'" if self.roi_name else "")
