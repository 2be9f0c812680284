"""Named ROIs in the image's zarr: ROI tables in the Fractal/ngio `roi_table` convention.

Layout (fractal-tasks-core table spec V1 / ngio ROI table V1):

    image.zarr/tables/            attributes {"tables": [names...]}
    image.zarr/tables/<name>/     an AnnData group (anndata's own `encoding-type`), plus
        type "roi_table", fractal_table_version "1" (and ngio's table_version, backend,
        index_key "FieldIndex", index_type "str")

obs index (named `FieldIndex`): the ROI names; var index: the columns x_micrometer,
y_micrometer, z_micrometer, len_x_micrometer, len_y_micrometer, len_z_micrometer (in
that order); X: float64 values. Corners and lengths are physical positions in
micrometers, the image's scale and translation applied (as `units: micrometer` ROIs in a
config), so any level converts them to voxels. An image without z stores z 0 and length
1 (Fractal's convention for 2D). Written in the image's zarr format; a table is written
to a temporary group and moved into place, so a failure never leaves half a table.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import zarr

from engine.core.errors import NgffError
from engine.core.geometry import Roi
from engine.io.location import Location
from engine.io.metadata import ImageMeta
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
_SPATIAL = ("x", "y", "z")

# A named ROI: axis name -> (start, stop) in micrometers, for the axes x, y, z.
PhysicalBox = dict[str, tuple[float, float]]


def roi_table_attrs() -> dict[str, Any]:
    return {
        "type": "roi_table",
        "fractal_table_version": "1",
        "table_version": "1",
        "backend": "anndata",
        "index_key": "FieldIndex",
        "index_type": "str",
    }


def box_to_micrometer(meta: ImageMeta, box: Roi) -> PhysicalBox:
    """The physical extent of an index box (at `box.level`) along x, y and z, in um.

    Raises NgffError when a spatial axis has no length unit (no physical ROI exists).
    """
    level = meta.level(box.level if box.level is not None else 0)
    out: PhysicalBox = {}
    for i, axis in enumerate(meta.axes):
        if axis.name not in _SPATIAL:
            continue
        factor = LENGTH_UNITS_IN_MICROMETER.get(axis.unit or "")
        if factor is None:
            raise NgffError(
                f"{meta.path}: axis '{axis.name}' has no length unit ({axis.unit!r}); "
                "an ROI table needs physical units"
            )
        s, t = level.scale[i], level.translation[i]
        out[axis.name] = (
            (t + box.start[i] * s) * factor,
            (t + box.stop[i] * s) * factor,
        )
    return out


def _rows(rois: dict[str, PhysicalBox]) -> np.ndarray:
    values = np.zeros((len(rois), len(ROI_COLUMNS)), dtype=np.float64)
    for row, box in enumerate(rois.values()):
        for k, axis in enumerate(_SPATIAL):
            start, stop = box.get(axis, (0.0, 1.0))
            values[row, k] = start
            values[row, 3 + k] = stop - start
    return values


def write_rois(root: zarr.Group, rois: dict[str, PhysicalBox], table: str = DEFAULT_TABLE) -> None:
    """Add or replace `rois` (by name) in the ROI table `tables/<table>`, keeping the
    others; list the table in `tables/` attributes."""
    import anndata
    import pandas as pd

    existing: dict[str, PhysicalBox] = {}
    key = f"{TABLES}/{table}"
    if key in root:
        kind = root[key].attrs.get("type")
        if kind != "roi_table":
            raise NgffError(f"{_where(root, key)} exists and is a {kind!r} table, not an roi_table")
        existing = _read_rows(read_anndata_group(root[key]), _where(root, key))
    merged = {**existing, **rois}
    obs = pd.DataFrame(index=pd.Index(list(merged), name="FieldIndex"))
    var = pd.DataFrame(index=pd.Index(list(ROI_COLUMNS)))
    data = anndata.AnnData(X=_rows(merged), obs=obs, var=var)
    write_anndata(root, table, data, roi_table_attrs())


def _where(root: zarr.Group, key: str) -> str:
    """A group's place for messages: its folder when local."""
    base = getattr(root.store, "root", None) or getattr(root.store, "path", "")
    return str(Path(str(base)) / root.path / key) if base else key


def read_anndata_group(group: zarr.Group) -> Any:
    import anndata

    return anndata.read_zarr(group)


def read_roi_table(path: str | Path | Location) -> dict[str, PhysicalBox]:
    """name -> {x, y, z: (start, stop) in um} of one ROI table group."""
    return _read_rows(read_anndata(path), path)


def _read_rows(data: Any, path: object) -> dict[str, PhysicalBox]:
    columns = [str(v) for v in data.var_names]
    missing = [c for c in ROI_COLUMNS if c not in columns]
    if missing:
        raise NgffError(f"{path}: ROI table lacks the column(s) {', '.join(missing)}")
    values = np.asarray(data.X, dtype=np.float64)
    where = {c: columns.index(c) for c in ROI_COLUMNS}
    out: dict[str, PhysicalBox] = {}
    for name, row in zip(data.obs_names, values, strict=True):
        out[str(name)] = {
            axis: (
                float(row[where[f"{axis}_micrometer"]]),
                float(row[where[f"{axis}_micrometer"]] + row[where[f"len_{axis}_micrometer"]]),
            )
            for axis in _SPATIAL
        }
    return out


def roi_table_names(image: str | Path | Location) -> list[str]:
    """Tables listed in `tables/` whose type is roi_table, in listing order."""
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
            if tables[name].attrs.get("type") in ("roi_table", "masking_roi_table"):
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
