"""Named ROIs in the image's zarr: ROI tables in the Fractal/ngio convention.

Layout (Fractal table spec V1 as ngio 1.1 writes it):

    image.zarr/tables/            attributes {"tables": [names...]}
    image.zarr/tables/<name>/     an AnnData group (anndata's own `encoding-type`), plus
        type "roi_table", table_version "1", backend "anndata_v1", index_key
        "FieldIndex", index_type "str"; a masking ROI table (`type: masking_roi_table`,
        one row per object of a label image) also region {path: ../labels/<label>},
        instance_key "label", and its rows are named by the label ids

obs index: the ROI names; var index: the columns x_micrometer, y_micrometer,
z_micrometer, len_x_micrometer, len_y_micrometer, len_z_micrometer; X: float64 values.

Coordinates are micrometers from the image's own origin, as ngio reads and writes them:
voxel i of a level starts at i * scale, the image's `translation` NOT added (ngio's
`build_image_roi_table` of a translated image starts at 0). engine/io/rois.py turns a
row into voxels as ngio does (floor of the start, ceil of the stop, clipped to the image).
An image without z stores z 0 and length 1 (Fractal's convention for 2D).

Older engine versions wrote their ROI tables with the translation added, and with the
attributes `fractal_table_version: "1"` and `backend: "anndata"` together (ngio writes
neither `fractal_table_version` nor that backend name; fractal-tasks-core writes no
backend). Such a table is read with the translation subtracted again, so its ROIs select
the same voxels as when it was written, and a table rewritten by the engine (a saved
config ROI) is converted whole. Written in the image's zarr format; a table is written to
a temporary group and moved into place, so a failure never leaves half a table.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from engine.core.errors import NgffError
from engine.core.geometry import Roi
from engine.io.location import Location
from engine.io.metadata import ImageMeta, read_image
from engine.io.tables import TABLES, read_anndata, write_anndata
from tasks.spec import LENGTH_UNITS_IN_MICROMETER

ROI_COLUMNS = (
    "x_micrometer",
    "y_micrometer",
    "z_micrometer",
    "len_x_micrometer",
    "len_y_micrometer",
    "len_z_micrometer",
)
DEFAULT_TABLE = "rois"
ROI_TABLE_TYPES = ("roi_table", "masking_roi_table")
_SPATIAL = ("x", "y", "z")

# A named ROI: axis name -> (start, stop) in micrometers from the image's origin, for x, y, z.
PhysicalBox = dict[str, tuple[float, float]]


@dataclass(frozen=True)
class RoiTable:
    """One ROI table as stored: its kind, the label image a masking table refers to, and
    its rows (name -> box, in micrometers from the image's origin, legacy rows converted)."""

    name: str
    kind: str
    rois: dict[str, PhysicalBox]
    region: str | None = None  # masking ROI tables: the label image's name
    legacy: bool = False  # written by an older engine (translation added); converted

    def label(self, roi: str) -> int | None:
        """The object id a masking table's row stands for (its row name), else None."""
        return int(roi) if self.kind == "masking_roi_table" else None


def roi_table_attrs(kind: str = "roi_table", region: str | None = None) -> dict[str, Any]:
    """The attributes ngio 1.1 writes on an ROI table (and on a masking ROI table)."""
    attrs: dict[str, Any] = {
        "type": kind,
        "table_version": "1",
        "backend": "anndata_v1",
        "index_key": "FieldIndex",
        "index_type": "str",
    }
    if kind == "masking_roi_table":
        attrs.update(
            index_key="label",
            index_type="int",
            region={"path": f"../labels/{region}"},
            instance_key="label",
        )
    return attrs


def is_legacy(attrs: dict[str, Any]) -> bool:
    """An ROI table written by an older engine, with the image's translation added."""
    return "fractal_table_version" in attrs and attrs.get("backend") == "anndata"


def box_to_micrometer(meta: ImageMeta, box: Roi) -> PhysicalBox:
    """The extent of an index box (at `box.level`) along x, y and z, in um from the
    image's origin (ngio's convention: the translation is not added).

    Raises NgffError when a spatial axis has no length unit (no physical ROI exists).
    """
    level = meta.level(box.level if box.level is not None else 0)
    out: PhysicalBox = {}
    for i, axis in enumerate(meta.axes):
        if axis.name not in _SPATIAL:
            continue
        factor = _micrometers(meta, i)
        s = level.scale[i]
        out[axis.name] = (box.start[i] * s * factor, box.stop[i] * s * factor)
    return out


def _micrometers(meta: ImageMeta, axis: int) -> float:
    name, unit = meta.axes[axis].name, meta.axes[axis].unit
    factor = LENGTH_UNITS_IN_MICROMETER.get(unit or "")
    if factor is None:
        raise NgffError(
            f"{meta.path}: axis '{name}' has no length unit ({unit!r}); "
            "an ROI table needs physical units"
        )
    return factor


def _image_of(table: Location) -> Location:
    """The image a table group `<image>/tables/<name>` belongs to."""
    return Location(table.url.rstrip("/").rsplit("/", 2)[0], table.options_json)


def _origin_um(image: Location) -> dict[str, float]:
    """The image's level-0 translation along x, y, z in um (what legacy rows added)."""
    meta = read_image(image, validate=False)
    level = meta.level(0)
    return {
        axis.name: level.translation[i] * _micrometers(meta, i)
        for i, axis in enumerate(meta.axes)
        if axis.name in _SPATIAL
    }


def _rows(rois: dict[str, PhysicalBox]) -> np.ndarray:
    values = np.zeros((len(rois), len(ROI_COLUMNS)), dtype=np.float64)
    for row, box in enumerate(rois.values()):
        for k, axis in enumerate(_SPATIAL):
            start, stop = box.get(axis, (0.0, 1.0))
            values[row, k] = start
            values[row, 3 + k] = stop - start
    return values


def write_rois(
    root: zarr.Group,
    rois: dict[str, PhysicalBox],
    table: str = DEFAULT_TABLE,
    where: Location | None = None,
) -> None:
    """Add or replace `rois` (by name, in um from the image's origin) in the ROI table
    `tables/<table>`, keeping the others (a legacy table's rows converted); list the
    table in `tables/` attributes."""
    import anndata
    import pandas as pd

    existing: dict[str, PhysicalBox] = {}
    key = f"{TABLES}/{table}"
    if key in root:
        kind = root[key].attrs.get("type")
        where = where.child(key) if where is not None else _group_location(root, key)
        if kind != "roi_table":
            raise NgffError(f"{where} exists and is a {kind!r} table, not an roi_table")
        existing = read_roi_table(where)
    merged = {**existing, **rois}
    obs = pd.DataFrame(index=pd.Index(list(merged), name="FieldIndex"))
    var = pd.DataFrame(index=pd.Index(list(ROI_COLUMNS)))
    data = anndata.AnnData(X=_rows(merged), obs=obs, var=var)
    write_anndata(root, table, data, roi_table_attrs())


def write_masking_rois(
    root: zarr.Group, table: str, region: str, rois: dict[int, PhysicalBox]
) -> None:
    """Write (replacing) a masking ROI table: one row per object id of `labels/<region>`."""
    import anndata
    import pandas as pd

    obs = pd.DataFrame(index=pd.Index([str(k) for k in rois], name="label"))
    var = pd.DataFrame(index=pd.Index(list(ROI_COLUMNS)))
    data = anndata.AnnData(X=_rows({str(k): v for k, v in rois.items()}), obs=obs, var=var)
    write_anndata(root, table, data, roi_table_attrs("masking_roi_table", region))


def read_roi_table(path: str | Path | Location) -> dict[str, PhysicalBox]:
    """name -> {x, y, z: (start, stop) in um from the image's origin} of one ROI table
    group (`<image>/tables/<name>`)."""
    return load_roi_table(path).rois


def load_roi_table(path: str | Path | Location) -> RoiTable:
    """One ROI table group (`<image>/tables/<name>`), legacy rows converted."""
    path = Location.parse(path)
    attrs = path.read_attrs() or {}
    data = read_anndata(path)
    columns = [str(v) for v in data.var_names]
    missing = [c for c in ROI_COLUMNS if c not in columns]
    if missing:
        raise NgffError(f"{path}: ROI table lacks the column(s) {', '.join(missing)}")
    values = np.asarray(data.X, dtype=np.float64)
    where = {c: columns.index(c) for c in ROI_COLUMNS}
    legacy = is_legacy(attrs)
    origin = _origin_um(_image_of(path)) if legacy else {}
    out: dict[str, PhysicalBox] = {}
    for name, row in zip(data.obs_names, values, strict=True):
        box: PhysicalBox = {}
        for axis in _SPATIAL:
            start = float(row[where[f"{axis}_micrometer"]]) - origin.get(axis, 0.0)
            box[axis] = (start, start + float(row[where[f"len_{axis}_micrometer"]]))
        out[str(name)] = box
    region = attrs.get("region")
    label = None
    if isinstance(region, dict) and isinstance(region.get("path"), str):
        label = region["path"].rstrip("/").split("/")[-1]
    kind = str(attrs.get("type", "roi_table"))
    return RoiTable(path.name, kind, out, label, legacy)


def _group_location(root: zarr.Group, key: str) -> Location:
    """Where a group below `root` is: its folder, or its URL in a remote store."""
    store = root.store
    base = getattr(store, "root", None)
    if base is not None:  # a LocalStore
        return Location.parse(Path(str(base)) / root.path / key)
    raise NgffError(f"{key}: a table in a remote store is read through its Location")


def roi_table_names(image: str | Path | Location) -> list[str]:
    """Tables listed in `tables/` whose type is roi_table or masking_roi_table, in
    listing order."""
    folder = Location.parse(image).child(TABLES)
    if not folder.exists():
        return []
    try:
        tables = zarr.open_group(folder.zarr_url(), mode="r")
        listed = list(tables.attrs.get("tables", []))
    except (OSError, ValueError, zarr.errors.BaseZarrError):
        return []
    names = []
    for name in listed:
        try:
            if tables[name].attrs.get("type") in ROI_TABLE_TYPES:
                names.append(name)
        except (KeyError, OSError, ValueError, zarr.errors.BaseZarrError):
            continue
    return names


def read_rois(*images: str | Path | Location) -> dict[str, tuple[str, PhysicalBox]]:
    """Every named ROI in the ROI tables of `images` (an output store, then its image):
    name -> (table, box). The first table listed wins when two tables use the same name."""
    found: dict[str, tuple[str, PhysicalBox]] = {}
    for image in dict.fromkeys(Location.parse(i) for i in images):
        for table in roi_table_names(image):
            for name, box in read_roi_table(image.child(f"{TABLES}/{table}")).items():
                found.setdefault(name, (table, box))
    return found
