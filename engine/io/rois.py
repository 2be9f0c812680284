"""Turning what a user calls an ROI (a name, a YAML spec, a CLI string) into an index box.

The result is always a `Roi` over all image axes at the processing level; axes
the user did not restrict span the whole image. A box outside the image is an
error that states the image's extent, not a silent clip.
"""

from __future__ import annotations

import math
import re

from pydantic import ValidationError

from engine.core.errors import ConfigError, NgffError
from engine.core.geometry import Roi
from engine.core.pipeline import AXES, Pipeline, RoiSpec
from engine.io.location import Location
from engine.io.metadata import Axis, ImageMeta, open_group
from engine.io.roi_tables import (
    DEFAULT_TABLE,
    PhysicalBox,
    box_to_micrometer,
    load_roi_table,
    read_rois,
    roi_table_names,
    write_rois,
)
from engine.io.tables import TABLES
from tasks.spec import LENGTH_UNITS_IN_MICROMETER

_CLI_RANGE = re.compile(r"^\s*(?:([a-z])\s*=\s*)?(-?\d+)\s*:\s*(-?\d+)\s*$")


def parse_cli_roi(text: str, meta: ImageMeta) -> RoiSpec:
    """`z0:z1,y0:y1,x0:x1` (spatial axes in order) or `t=0:1,x=5:9` (named), in pixels."""
    parts = text.split(",")
    ranges: dict[str, tuple[float, float]] = {}
    spatial_names = [meta.axes[i].name for i in meta.spatial_axes]
    positional = 0
    for part in parts:
        match = _CLI_RANGE.match(part)
        if not match:
            raise ConfigError(f"--roi '{text}': '{part}' is not start:stop or axis=start:stop")
        axis, start, stop = match.group(1), int(match.group(2)), int(match.group(3))
        if axis is None:
            if positional >= len(spatial_names):
                raise ConfigError(
                    f"--roi '{text}': more ranges than the image's spatial axes {spatial_names}"
                )
            axis = spatial_names[positional]
            positional += 1
        if axis not in AXES:
            raise ConfigError(f"--roi '{text}': axis '{axis}' is not one of {', '.join(AXES)}")
        if axis in ranges:
            raise ConfigError(f"--roi '{text}': axis '{axis}' is given twice")
        if start < 0:
            raise ConfigError(f"--roi '{text}': {axis}: start {start} is negative")
        ranges[axis] = (start, stop)
    if 0 < positional == len(ranges) and positional < len(spatial_names):  # only unnamed
        raise ConfigError(
            f"--roi '{text}': {positional} range(s) for the image's spatial axes "
            f"{', '.join(spatial_names)}; give one start:stop per axis, or name the axes "
            f"to limit (e.g. {spatial_names[-1]}=0:64)"
        )
    try:
        return RoiSpec(units="pixel", **ranges)
    except ValidationError as exc:
        message = exc.errors()[0]["msg"].removeprefix("Value error, ")
        raise ConfigError(f"--roi '{text}': {message}") from None


def check_config_rois(rois: dict[str, RoiSpec]) -> None:
    """Refuse a config with an ROI in an unknown unit, used or not: a config is checked
    whole even when every output is reused. What depends on the image (its levels, axes,
    extent) is checked when a run asks for the ROI: one config serves many images."""
    for name, spec in rois.items():
        if spec.units != "pixel" and spec.units not in LENGTH_UNITS_IN_MICROMETER:
            known = ", ".join(["pixel", *LENGTH_UNITS_IN_MICROMETER])
            raise ConfigError(f"roi '{name}': units '{spec.units}' is not one of {known}")


def _check_spec(spec: RoiSpec, meta: ImageMeta, name: str) -> None:
    names = meta.axis_names
    if spec.units == "pixel" and not 0 <= spec.level < len(meta.levels):
        raise ConfigError(
            f"roi '{name}': level {spec.level} does not exist (the image has "
            f"{len(meta.levels)} levels, 0..{len(meta.levels) - 1})"
        )
    for axis in spec.ranges():
        if axis not in names:
            raise ConfigError(
                f"roi '{name}': axis '{axis}' is not an axis of the image {list(names)}"
            )


def resolve_roi(spec: RoiSpec | None, meta: ImageMeta, level: int, name: str = "roi") -> Roi:
    """An index box at `level` over all image axes."""
    lv = meta.level(level)
    whole = Roi.from_shape(lv.shape, level)
    if spec is None:
        return whole
    names = meta.axis_names
    _check_spec(spec, meta, name)
    if spec.units == "pixel":
        box = _pixel_box(spec, meta, whole, name)
    elif spec.origin == "image":
        box = _image_origin_box(spec, meta, level, whole, name)
    else:
        box = _physical_box(spec, meta, level, whole, name)
    if box.empty():
        raise ConfigError(f"roi '{name}': selects no voxels at level {level}")
    if not whole.contains(box):
        extent = ", ".join(f"{n}: 0..{s}" for n, s in zip(names, lv.shape, strict=True))
        raise ConfigError(
            f"roi '{name}': {_describe(box, names)} lies outside the image "
            f"(level {level}: {extent})"
        )
    return box


def _pixel_box(spec: RoiSpec, meta: ImageMeta, whole: Roi, name: str) -> Roi:
    ranges = spec.ranges()
    for axis, (a, b) in ranges.items():
        if a != int(a) or b != int(b):
            raise ConfigError(f"roi '{name}': pixel range {axis}: [{a}, {b}] must be whole numbers")
    start, stop = list(whole.start), list(whole.stop)
    if spec.level != whole.level:
        src = meta.level(spec.level)
        start, stop = list(Roi.from_shape(src.shape, spec.level).start), list(src.shape)
    for i, axis in enumerate(meta.axis_names):
        if axis in ranges:
            start[i], stop[i] = int(ranges[axis][0]), int(ranges[axis][1])
    box = Roi(tuple(start), tuple(stop), spec.level)
    if spec.level == whole.level:
        return box
    src = meta.level(spec.level)
    dst = meta.level(whole.level)
    return box.to_physical(src.scale, src.translation).to_index(
        whole.level, dst.scale, dst.translation
    )


def _physical_box(spec: RoiSpec, meta: ImageMeta, level: int, whole: Roi, name: str) -> Roi:
    _check_units(spec, name)
    lv = meta.level(level)
    physical = whole.to_physical(lv.scale, lv.translation)
    start, stop = list(physical.start), list(physical.stop)
    factor = LENGTH_UNITS_IN_MICROMETER[spec.units]
    for i, axis in enumerate(meta.axes):
        if axis.name not in spec.ranges():
            continue
        a, b = spec.ranges()[axis.name]
        if axis.type in ("channel", "time") or axis.name in ("c", "t"):
            start[i], stop[i] = (
                lv.translation[i] + a * lv.scale[i],
                lv.translation[i] + b * lv.scale[i],
            )
            continue
        to_axis_unit = factor / _axis_micrometers(axis, name)
        start[i], stop[i] = a * to_axis_unit, b * to_axis_unit
    return Roi(tuple(start), tuple(stop), None).to_index(level, lv.scale, lv.translation)


def _image_origin_box(spec: RoiSpec, meta: ImageMeta, level: int, whole: Roi, name: str) -> Roi:
    """ngio's reading of a micrometer box given from the image's own origin (ROI tables):
    start and length in voxels of `level` (each snapped to a whole voxel when within 1%
    of one, ngio's `world_to_pixel`), then floor of the start and ceil of the stop,
    clipped to the image (a box wholly outside stays so, and is refused). ngio 1.1.3
    selects the same voxels (tests/test_roi_tables_ngio.py). For the issue's example box
    the old centre rule kept (15, 68, 61) voxels where ngio keeps (15, 69, 62)."""
    _check_units(spec, name)
    lv = meta.level(level)
    start, stop = list(whole.start), list(whole.stop)
    factor = LENGTH_UNITS_IN_MICROMETER[spec.units]
    for i, axis in enumerate(meta.axes):
        if axis.name not in spec.ranges():
            continue
        a, b = spec.ranges()[axis.name]
        if axis.type in ("channel", "time") or axis.name in ("c", "t"):
            start[i], stop[i] = int(a), math.ceil(b)
            continue
        size = lv.scale[i] * _axis_micrometers(axis, name) / factor
        first = _snap(a / size)
        length = _snap((b - a) / size)
        start[i], stop[i] = math.floor(first), math.ceil(first + length)
    box = Roi(tuple(start), tuple(stop), level)
    return box if box.intersect(whole).empty() else box.intersect(whole)


def _snap(voxels: float, tolerance: float = 1e-2) -> float:
    nearest = round(voxels)
    return float(nearest) if abs(nearest - voxels) < tolerance else voxels


def _check_units(spec: RoiSpec, name: str) -> None:
    if spec.units not in LENGTH_UNITS_IN_MICROMETER:
        known = ", ".join(["pixel", *LENGTH_UNITS_IN_MICROMETER])
        raise ConfigError(f"roi '{name}': units '{spec.units}' is not one of {known}")


def _axis_micrometers(axis: Axis, name: str) -> float:
    if axis.unit not in LENGTH_UNITS_IN_MICROMETER:
        raise ConfigError(
            f"roi '{name}': axis '{axis.name}' has no length unit in the image "
            f"({axis.unit!r}); give this ROI in pixels"
        )
    return LENGTH_UNITS_IN_MICROMETER[axis.unit]


def _describe(box: Roi, names: tuple[str, ...]) -> str:
    return (
        "{"
        + ", ".join(f"{n}: {a}..{b}" for n, a, b in zip(names, box.start, box.stop, strict=True))
        + "}"
    )


UserRoi = str | RoiSpec | dict | None  # every form a user gives an ROI in


def roi_spec(
    roi: UserRoi,
    meta: ImageMeta,
    pipeline: Pipeline | None = None,
    text_level: int = 0,
    store: Location | None = None,
) -> tuple[str, RoiSpec | None]:
    """The one place that tells an ROI's forms apart: (its name for messages, its spec).

    None is the whole image; a dict or RoiSpec is taken as it is; text with a `:` is a
    pixel box as `--roi` takes it (`z0:z1,y0:y1,x0:x1`, at level `text_level`); any
    other text is a name: the config's `rois:` first (with a pipeline), then the ROI
    tables of the output store (`store`, when separate) and of the image.
    """
    if roi is None:
        return "whole image", None
    if isinstance(roi, dict):
        return "roi", RoiSpec.model_validate(roi)
    if isinstance(roi, RoiSpec):
        return "roi", roi
    if ":" in roi:
        return roi, parse_cli_roi(roi, meta).model_copy(update={"level": text_level})
    if pipeline is not None:
        return roi, named_roi(pipeline, roi, meta, store)
    return roi, image_roi(meta, roi, store)


def user_roi(
    roi: UserRoi,
    meta: ImageMeta,
    level: int,
    pipeline: Pipeline | None = None,
    text_level: int = 0,
    store: Location | None = None,
) -> Roi:
    """Any form of an ROI (see `roi_spec`) as an index box at `level` over all axes."""
    name, spec = roi_spec(roi, meta, pipeline, text_level, store)
    return resolve_roi(spec, meta, level, name)


def _tables_of(meta: ImageMeta, store: Location | None) -> list[Location]:
    """Where named ROIs are: a separate output store first, then the image."""
    return [w for w in (store, meta.location) if w is not None]


def named_roi(
    pipeline: Pipeline, name: str, meta: ImageMeta | None = None, store: Location | None = None
) -> RoiSpec:
    """An ROI by name: the config's `rois:` first, then the ROI tables of the output
    store (when separate) and of the image."""
    if name in pipeline.rois:
        return pipeline.rois[name]
    stored = read_rois(*_tables_of(meta, store)) if meta is not None else {}
    if name in stored:
        return spec_from_table(stored[name][1], meta.axis_names)
    known = ", ".join(sorted(pipeline.rois)) or "none defined"
    where = "the config"
    if meta is not None:
        where = f"the config or the ROI tables of {meta.path}"
        known += f"; in the image: {', '.join(sorted(stored)) or 'none'}"
    raise ConfigError(f"roi '{name}' is not defined in {where} (known: {known})")


def image_roi(meta: ImageMeta, name: str, store: Location | None = None) -> RoiSpec:
    """An ROI by name from the image's ROI tables (for commands without a config)."""
    stored = read_rois(*_tables_of(meta, store))
    if name not in stored:
        known = ", ".join(sorted(stored)) or "none"
        raise ConfigError(f"roi '{name}' is not in the ROI tables of {meta.path} (known: {known})")
    return spec_from_table(stored[name][1], meta.axis_names)


OVERLAP = ("refuse", "first", "last")


def table_rois(
    meta: ImageMeta, table: str, level: int, overlap: str = "refuse"
) -> list[tuple[str, RoiSpec, Roi, tuple[str, int] | None]]:
    """Every ROI of the ROI table `table` as (name, spec, index box at `level`, mask), in
    the order to run them: the table's order; with `overlap="first"` reversed, so that
    where ROIs overlap the one listed first is written last and wins ("last": the one
    listed last wins). Overlapping ROIs are refused unless `overlap` says which wins.

    A masking ROI table's rows are objects of its `region` label image: mask is (that
    label image's name, the object's id), and boxes may overlap (the masks do not)."""
    if overlap not in OVERLAP:
        raise ConfigError(f"roi_overlap '{overlap}' is not one of {', '.join(OVERLAP)}")
    names = roi_table_names(meta.path)
    if table not in names:
        raise ConfigError(
            f"roi_table '{table}' is not an ROI table of {meta.path} "
            f"(ROI tables: {', '.join(names) or 'none'})"
        )
    stored = load_roi_table(f"{meta.path}/{TABLES}/{table}")
    masking = stored.kind == "masking_roi_table"
    if masking and not stored.region:
        raise ConfigError(f"roi_table '{table}' is a masking ROI table without a 'region'")
    found = []
    for name, box in stored.rois.items():
        spec = spec_from_table(box, meta.axis_names)
        index_box = resolve_roi(spec, meta, level, f"{table}/{name}")
        try:
            mask = (str(stored.region), int(name)) if masking else None
        except ValueError:
            raise ConfigError(
                f"roi_table '{table}': row '{name}' of a masking ROI table is not a label id"
            ) from None
        found.append((name, spec, index_box, mask))
    if not found:
        raise ConfigError(f"roi_table '{table}' of {meta.path} has no rows")
    if overlap == "refuse" and not masking:
        for k, (a, _, box_a, _) in enumerate(found):
            for b, _, box_b, _ in found[k + 1 :]:
                common = box_a.intersect(box_b)
                if not common.empty():
                    raise ConfigError(
                        f"roi_table '{table}': ROIs '{a}' and '{b}' overlap "
                        f"({_describe(common, meta.axis_names)} at level {level}); say which "
                        "wins with roi_overlap 'first' or 'last' (--roi-overlap)"
                    )
    return found[::-1] if overlap == "first" else found


def spec_from_table(box: PhysicalBox, axes: tuple[str, ...]) -> RoiSpec:
    """A micrometer RoiSpec from an ROI-table row (from the image's origin, as ngio reads
    it), for the image's spatial axes only (a 2D image ignores the table's z)."""
    return RoiSpec(
        units="micrometer", origin="image", **{a: r for a, r in box.items() if a in axes}
    )


def save_config_roi(
    pipeline: Pipeline,
    roi: object,
    meta: ImageMeta,
    box: Roi,
    table: str = DEFAULT_TABLE,
    output: Location | None = None,
) -> None:
    """After a run on a config-defined ROI: store it (as run, in um) in `tables/<table>`."""
    if not isinstance(roi, str) or roi not in pipeline.rois:
        return
    try:
        physical = box_to_micrometer(meta, box)
        where = output if output is not None else meta.location
        write_rois(open_group(where, mode="r+"), {roi: physical}, table, where)
    except (NgffError, OSError):
        return  # no physical units, `tables/<table>` is another kind, or read-only: config only
