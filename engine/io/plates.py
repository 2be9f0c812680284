"""Finding the images of a collection: an HCS plate, a well, or a list/glob of images.

NGFF HCS layout (0.4: keys top-level; 0.5: under `ome`), as ngio's `create_empty_plate`
and ome-zarr-py's `write_plate_metadata` write it:

    plate.zarr/               attributes {plate: {rows, columns, wells: [{path: "B/03"}]}}
    plate.zarr/B/03/          attributes {well: {images: [{path: "0"}, {path: "1"}]}}
    plate.zarr/B/03/0/        an OME-Zarr image (a field of view)

`collection_images` returns the selected images in plate order (wells as listed, fields as
listed in each well), each with its well ("B03") and field ("0"), so one run can plan
them all and name the image at fault. A plate-level table (`write_plate_table`) holds
every field's rows with `well` and `field` columns, at `plate.zarr/tables/<name>`.
"""

from __future__ import annotations

import glob
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from engine.core.errors import ConfigError, NgffError
from engine.io.tables import write_anndata

_GLOB = set("*?[")


@dataclass(frozen=True)
class FieldImage:
    """One image of a collection: its path, and where it sits in a plate (if it does)."""

    path: str
    well: str | None = None  # "B03": row name then column name
    field: str | None = None  # the image's path in its well, "0"
    plate: str | None = None  # the plate root

    @property
    def label(self) -> str:
        """How messages name it: `B03/0` in a plate, else its path."""
        if self.well is not None:
            return f"{self.well}/{self.field}"
        return self.path


def _ome(path: str | Path) -> dict[str, Any] | None:
    try:
        attrs = zarr.open_group(str(path), mode="r").attrs.asdict()
    except (FileNotFoundError, OSError, ValueError, zarr.errors.BaseZarrError):
        return None
    return dict(attrs.get("ome", attrs))


def kind_of(path: str | Path) -> str | None:
    """ "plate", "well", "image" or None (not an OME-Zarr group)."""
    ome = _ome(path)
    if ome is None:
        return None
    for kind, key in (("plate", "plate"), ("well", "well"), ("image", "multiscales")):
        if key in ome:
            return kind
    return None


def is_collection(input: str | Path | Sequence[str] | None) -> bool:
    """More than one image may be meant: a list, a glob, a plate or a well."""
    if input is None:
        return False
    if not isinstance(input, str | Path):
        return True
    if "://" in str(input):  # a URL (engine/io/location.py): one image; remote plates
        return False  # are not read as collections (yet)
    if _GLOB & set(str(input)):
        return True
    return kind_of(input) in ("plate", "well")


def collection_images(
    input: str | Path | Sequence[str],
    wells: Sequence[str] | None = None,
    fields: Sequence[str] | None = None,
) -> list[FieldImage]:
    """The selected images of a plate, a well, or a list/glob of images (in order)."""
    if not isinstance(input, str | Path):
        found = [img for item in input for img in collection_images(item, wells, fields)]
        return _nonempty(found, str(list(input)))
    text = str(input)
    if _GLOB & set(text):
        paths = sorted(glob.glob(text))
        found = [img for p in paths for img in collection_images(p, wells, fields)]
        return _nonempty(found, text)
    kind = kind_of(text)
    if kind == "plate":
        return _plate_images(text, wells, fields)
    if kind == "well":
        return _well_images(text, _well_name(Path(text)), fields, None)
    if kind == "image":
        return [FieldImage(text)]
    if not Path(text).exists():
        raise NgffError(f"{text}: no such file or directory")
    raise NgffError(
        f"{text}: not an OME-Zarr image, well or plate (no 'multiscales', 'well' "
        "or 'plate' in its attributes)"
    )


def _nonempty(found: list[FieldImage], what: str) -> list[FieldImage]:
    if not found:
        raise ConfigError(f"input {what}: selects no images")
    return found


def _well_name(path: Path) -> str:
    return f"{path.parent.name}{path.name}"


def plate_wells(plate: str | Path) -> list[str]:
    """The plate's well paths ("B/03"), in the order its metadata lists them."""
    ome = _ome(plate) or {}
    wells = ome.get("plate", {}).get("wells", [])
    return [str(w["path"]) for w in wells if isinstance(w, dict) and "path" in w]


def _plate_images(
    plate: str, wells: Sequence[str] | None, fields: Sequence[str] | None
) -> list[FieldImage]:
    paths = plate_wells(plate)
    by_name = {p.replace("/", ""): p for p in paths}
    chosen = paths
    if wells:
        wanted = [w.replace("/", "") for w in wells]
        unknown = [w for w in wanted if w not in by_name]
        if unknown:
            raise ConfigError(
                f"--wells: {', '.join(unknown)} not in the plate {plate} "
                f"(wells: {', '.join(by_name) or 'none'})"
            )
        chosen = [by_name[w] for w in wanted]
    found = []
    for well in chosen:
        found += _well_images(str(Path(plate) / well), well.replace("/", ""), fields, plate)
    return _nonempty(found, plate)


def _well_images(
    well: str, name: str, fields: Sequence[str] | None, plate: str | None
) -> list[FieldImage]:
    ome = _ome(well) or {}
    images = [str(i["path"]) for i in ome.get("well", {}).get("images", []) if "path" in i]
    if fields:
        images = [f for f in images if f in {str(x) for x in fields}]
    return [FieldImage(str(Path(well) / f), name, f, plate) for f in images]


def write_plate_table(
    plate: str,
    name: str,
    rows: Sequence[tuple[FieldImage, np.ndarray, list[str], np.ndarray, list[str] | None]],
) -> str:
    """Every field's rows of the table `name` as one feature table at the plate root:
    obs columns `well`, `field`, `label` (and `roi` where the fields' tables have one),
    obs index `<well>/<field>/<label>`; the fields' columns as X. Returns its path."""
    import anndata
    import pandas as pd

    columns = next((c for _, _, c, _, _ in rows), [])
    index, well, field, label, roi, values = [], [], [], [], [], []
    for image, labels, cols, vals, rois in rows:
        if cols != columns:
            raise NgffError(
                f"{image.path}/tables/{name}: columns {cols} differ from the other fields' "
                f"{columns}"
            )
        for k, lab in enumerate(labels):
            index.append(f"{image.well}/{image.field}/{int(lab)}")
            well.append(image.well)
            field.append(image.field)
            label.append(int(lab))
            roi.append(rois[k] if rois is not None else "")
        values.append(np.asarray(vals, dtype=np.float64).reshape(len(labels), len(columns)))
    obs = pd.DataFrame(
        {"well": well, "field": field, "label": label},
        index=pd.Index(index, name="object"),
    )
    if any(roi):
        obs["roi"] = roi
    data = anndata.AnnData(
        X=np.concatenate(values) if values else np.zeros((0, len(columns))),
        obs=obs,
        var=pd.DataFrame(index=pd.Index(columns)),
    )
    attrs = {
        "type": "feature_table",
        "table_version": "1",
        "backend": "anndata_v1",
        "index_key": "object",
        "index_type": "str",
        "instance_key": "label",
    }
    write_anndata(zarr.open_group(plate, mode="r+"), name, data, attrs)
    return str(Path(plate) / "tables" / name)
