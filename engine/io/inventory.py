"""What an image's zarr holds: its levels, the label and result outputs and tables beside
it, the versions of outputs kept with `versions: keep`, the models trained on it, and
its named ROIs (from its ROI tables, in micrometers). Given an output store, what the
store holds is listed too (after the image's own)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import zarr

from engine.io.location import Location
from engine.io.metadata import open_group, read_image
from engine.io.models import model_info, model_path, trained_models
from engine.io.ngff_write import engine_attrs, listed, read_ome
from engine.io.output_store import check_store
from engine.io.roi_tables import read_rois


def describe(
    path: str | Path | Location, output: str | Path | Location | None = None
) -> dict[str, Any]:
    meta = read_image(path)
    path = meta.location
    root = open_group(path)
    stores = [(path, root)]
    if output is not None:
        store = Location.parse(output)
        check_store(store, meta)
        if store.exists():
            stores.append((store, open_group(store)))
    info: dict[str, Any] = {
        "image": {
            "path": str(path),
            "version": meta.version,
            "axes": [a.to_json() for a in meta.axes],
            "levels": [
                {
                    "path": lv.path,
                    "shape": list(lv.shape),
                    "chunks": list(lv.chunks),
                    "dtype": lv.dtype,
                    "scale": list(lv.scale),
                    "translation": list(lv.translation),
                }
                for lv in meta.levels
            ],
        },
        "labels": [],
        "results": [],
        "tables": [t for w, r in stores for t in _tables(r, w)],
        "models": [
            {"name": name, "path": model_path(name), **(model_info(where, name) or {})}
            for where, _ in stores
            for name in trained_models(where)
        ],
        "rois": [
            {
                "name": name,
                "table": table,
                "micrometer": {a: list(box[a]) for a in meta.axis_names if a in box},
            }
            for name, (table, box) in read_rois(*(w for w, _ in reversed(stores))).items()
        ],
    }
    if output is not None:
        info["image"]["output_store"] = str(stores[-1][0]) if len(stores) > 1 else str(output)
    for kind in ("labels", "results"):
        for root, name in ((r, n) for _, r in stores for n in listed(r, kind, meta.version)):
            group = root[f"{kind}/{name}"]
            levels = read_ome(meta.version, group.attrs.asdict())["multiscales"][0]["datasets"]
            record = engine_attrs(group)
            info[kind].append(
                {
                    "name": name,
                    "dtype": str(group[levels[0]["path"]].dtype),
                    "levels": len(levels),
                    "runs": len(record.get("runs", [])),
                    "config_hash": record.get("config_hash"),
                    "max_label": record.get("max_label"),
                    "version": record.get("version"),
                }
            )
    info["versions"] = _versions(info)
    return info


def _versions(info: dict[str, Any]) -> list[dict[str, Any]]:
    """Per output with kept versions: each version's name, number, and what changed
    from the one before it."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for kind in ("labels", "results", "tables"):
        for item in info[kind]:
            version = item.get("version")
            if version:
                groups.setdefault(f"{kind}/{version['of']}", []).append(
                    {"name": item["name"], **{k: v for k, v in version.items() if k != "of"}}
                )
    return [
        {"output": output, "versions": sorted(found, key=lambda v: v["number"])}
        for output, found in groups.items()
    ]


def _tables(root: zarr.Group, path: Location) -> list[dict[str, Any]]:
    if "tables" not in root:
        return []
    found = []
    for name in root["tables"].attrs.asdict().get("tables", []):
        group = root[f"tables/{name}"]
        attrs = group.attrs.asdict()
        rows = group["X"].shape[0] if "X" in group else 0
        found.append(
            {
                "name": name,
                "type": attrs.get("type"),
                "region": attrs.get("region", {}).get("path"),
                "rows": int(rows),
                "runs": len(engine_attrs(group).get("runs", [])),
                "version": engine_attrs(group).get("version"),
                "scores": _scores(path.child(f"tables/{name}")) if "reference" in attrs else None,
            }
        )
    return found


def _scores(table: Location) -> dict[str, dict[str, float]]:
    """An evaluation table's rows: ROI key -> its scores (dice, iou, precision, ...)."""
    from engine.io.tables import read_rows

    names, columns, values = read_rows(table)
    return {
        str(name): {c: float(v) for c, v in zip(columns, row, strict=True)}
        for name, row in zip(names, values, strict=True)
    }
