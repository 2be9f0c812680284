"""Creating OME-Zarr images, label images and result images, and listing them.

Outputs are written in the same NGFF version as their source: 0.4 on Zarr v2
(`.zattrs`), 0.5 on Zarr v3 (`zarr.json` with `ome`). Engine-specific facts
(provenance) live beside the NGFF metadata under the key `ngff_engine`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import zarr

from engine.core.layout import MODELS
from engine.io.metadata import Axis, Version

ENGINE_KEY = "ngff_engine"
OutputKind = Literal["label", "image"]
# where outputs of each kind go (tables: engine/io/tables.py; models: engine/io/models.py)
GROUP_OF_KIND: dict[str, str] = {
    "label": "labels",
    "image": "results",
    "table": "tables",
    "model": MODELS,
}


@dataclass(frozen=True)
class LevelSpec:
    path: str
    shape: tuple[int, ...]
    chunks: tuple[int, ...]
    scale: tuple[float, ...]
    translation: tuple[float, ...]
    shards: tuple[int, ...] | None = None


def fast_compressor(dtype: np.dtype | str, zarr_format: Literal[2, 3]) -> Any:
    """LZ4 in Blosc, byte-shuffled (bit-shuffled for 1-byte types): every output chunk is
    encoded once and decoded by each later read (pyramid levels, tables, viewers). Both
    Zarr formats know Blosc, so any reader opens the result.

    On a 64x256x256 chunk of the sample, against zarr's default zstd: a uint16 image
    encoded 4.5 ms (zstd 75 ms) and decoded 2.8 ms (16 ms) at the same size. Byte
    against bit shuffle: uint32 labels 7.2 against 12.5 ms to encode, 4.2 against 6.4 ms
    to decode, 1.11 against 1.23 MB; a uint8 mask is 0.56 against 0.23 MB, so 1-byte
    types keep bit shuffle."""
    bits = np.dtype(dtype).itemsize == 1
    if zarr_format == 2:
        import numcodecs

        shuffle = numcodecs.Blosc.BITSHUFFLE if bits else numcodecs.Blosc.SHUFFLE
        return numcodecs.Blosc(cname="lz4", clevel=5, shuffle=shuffle)
    return zarr.codecs.BloscCodec(
        cname="lz4", clevel=5, shuffle="bitshuffle" if bits else "shuffle"
    )


def zarr_format(version: Version) -> Literal[2, 3]:
    return 3 if version == "0.5" else 2


def chunk_key_encoding(zarr_format: int) -> dict[str, str] | None:
    """NGFF 0.4 arrays (Zarr v2) name chunks `0/1/2`, `dimension_separator: "/"`, as the
    0.4 layout describes and ome-zarr-py and ngio write them (zarr's v2 default is `.`).
    Zarr v3 keeps its default (`c/0/1/2`)."""
    return {"name": "v2", "separator": "/"} if zarr_format == 2 else None


def multiscales_json(
    version: Version, axes: Sequence[Axis], levels: Sequence[LevelSpec], name: str, method: str
) -> dict[str, Any]:
    multiscale: dict[str, Any] = {
        "name": name,
        "axes": [a.to_json() for a in axes],
        "datasets": [
            {
                "path": lv.path,
                "coordinateTransformations": [
                    {"type": "scale", "scale": list(lv.scale)},
                    {"type": "translation", "translation": list(lv.translation)},
                ],
            }
            for lv in levels
        ],
        "type": method,
    }
    if version == "0.4":
        multiscale = {"version": "0.4", **multiscale}
    return multiscale


def ome_attrs(version: Version, ome: dict[str, Any]) -> dict[str, Any]:
    """NGFF keys go top-level in 0.4 and under `ome` (with the version) in 0.5."""
    if version == "0.5":
        return {"ome": {"version": "0.5", **ome}}
    return dict(ome)


def read_ome(version: Version, attrs: dict[str, Any]) -> dict[str, Any]:
    return dict(attrs.get("ome", {})) if version == "0.5" else dict(attrs)


def create_image(
    root: zarr.Group,
    path: str,
    *,
    version: Version,
    axes: Sequence[Axis],
    levels: Sequence[LevelSpec],
    dtype: np.dtype | str,
    name: str,
    method: str = "mean",
    extra_ome: dict[str, Any] | None = None,
    attrs: dict[str, Any] | None = None,
) -> zarr.Group:
    """Create (replacing anything at `path`) an empty multiscale image with its metadata."""
    group = root.create_group(path, overwrite=True) if path else root
    for lv in levels:
        kwargs: dict[str, Any] = {}
        if version == "0.5":
            kwargs["dimension_names"] = [a.name for a in axes]
            if lv.shards is not None:
                kwargs["shards"] = lv.shards
        else:
            kwargs["chunk_key_encoding"] = chunk_key_encoding(2)
        group.create_array(
            lv.path,
            shape=lv.shape,
            chunks=lv.chunks,
            dtype=dtype,
            fill_value=0,
            overwrite=True,
            compressors=fast_compressor(dtype, zarr_format(version)),
            **kwargs,
        )
    ome = {
        "multiscales": [multiscales_json(version, axes, levels, name, method)],
        **(extra_ome or {}),
    }
    group.attrs.update({**ome_attrs(version, ome), **(attrs or {})})
    return group


def listed(root: zarr.Group, group: str, version: Version) -> list[str]:
    """The names listed in the attributes of `labels/` (NGFF), `results/` or `tables/`."""
    if group not in root:
        return []
    attrs = root[group].attrs.asdict()
    names = read_ome(version, attrs).get(group, []) if group == "labels" else attrs.get(group, [])
    return [str(n) for n in names] if isinstance(names, list) else []


def attributes_document(version: Version) -> str:
    """The file of a group holding its attributes: `.zattrs` (0.4, zarr v2), `zarr.json`."""
    return ".zattrs" if version == "0.4" else "zarr.json"


def list_in_parent(root: zarr.Group, kind: OutputKind, name: str, version: Version) -> None:
    """Add `name` to the listing in `labels/` or `results/` attributes (idempotent)."""
    key = GROUP_OF_KIND[kind]
    names = listed(root, key, version)
    if name in names:
        return
    parent = root.require_group(key)
    if kind == "label":
        parent.attrs.update(ome_attrs(version, {key: [*names, name]}))
    else:
        parent.attrs.update({key: [*names, name]})


def image_label_json(version: Version, source: str = "../../") -> dict[str, Any]:
    """`image-label` of `labels/<name>`; `source` names the image (a URL when the label
    is in a separate output store)."""
    label: dict[str, Any] = {"source": {"image": source}}
    if version == "0.4":
        label["version"] = "0.4"
    return {"image-label": label}


def engine_attrs(group: zarr.Group) -> dict[str, Any]:
    return dict(group.attrs.asdict().get(ENGINE_KEY, {}))


def set_engine_attrs(group: zarr.Group, value: dict[str, Any]) -> None:
    group.attrs.update({ENGINE_KEY: value})


def output_path(kind: str, name: str) -> str:
    return f"{GROUP_OF_KIND[kind]}/{name}"
