"""OME-Zarr (NGFF 0.4 and 0.5) metadata and arrays: the only place that knows the layout."""

from engine.ngff.metadata import Axis, ImageMeta, Level, read_image

__all__ = ["Axis", "ImageMeta", "Level", "read_image"]
