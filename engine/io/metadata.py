"""Reading an OME-Zarr image's metadata into plain values.

The metadata is validated with ome-zarr-models; shapes, chunks and dtypes come
from the arrays themselves. The result, `ImageMeta`, is all the compiler needs,
so planning never opens pixel data.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

import numpy as np
import pydantic
import zarr

from engine.core.errors import NgffError
from engine.io.location import Location
from engine.io.validated import accepted_before, content_key, remember
from tasks.spec import LENGTH_UNITS_IN_MICROMETER

T = TypeVar("T")
Version = Literal["0.4", "0.5"]
SPATIAL = ("z", "y", "x")


@dataclass(frozen=True)
class Axis:
    name: str
    type: str | None = None
    unit: str | None = None

    def to_json(self) -> dict[str, str]:
        out = {"name": self.name}
        if self.type is not None:
            out["type"] = self.type
        if self.unit is not None:
            out["unit"] = self.unit
        return out


@dataclass(frozen=True)
class Level:
    path: str
    shape: tuple[int, ...]
    chunks: tuple[int, ...]
    dtype: str
    scale: tuple[float, ...]
    translation: tuple[float, ...]
    shards: tuple[int, ...] | None = None


@dataclass(frozen=True)
class ImageMeta:
    path: str
    version: Version
    axes: tuple[Axis, ...]
    levels: tuple[Level, ...]
    name: str | None = None
    # where the image lives, with its storage options; `path` is its URL as text
    where: Location | None = field(default=None, compare=False, repr=False)

    @property
    def location(self) -> Location:
        return self.where if self.where is not None else Location.parse(self.path)

    @property
    def axis_names(self) -> tuple[str, ...]:
        return tuple(a.name for a in self.axes)

    def axis_index(self, name: str) -> int | None:
        names = self.axis_names
        return names.index(name) if name in names else None

    @property
    def spatial_axes(self) -> tuple[int, ...]:
        """Axes a spatial op works on: type 'space', or named z/y/x when untyped."""
        return tuple(
            i
            for i, a in enumerate(self.axes)
            if a.type == "space" or (a.type is None and a.name in SPATIAL)
        )

    @property
    def channel_axis(self) -> int | None:
        for i, a in enumerate(self.axes):
            if a.type == "channel" or (a.type is None and a.name == "c"):
                return i
        return None

    def drop_channel(self, values: Sequence[T]) -> tuple[T, ...]:
        """Per-axis `values` (a shape, chunks, a scale) without the channel axis: the
        work space every op sees."""
        return tuple(v for i, v in enumerate(values) if i != self.channel_axis)

    def level(self, index: int) -> Level:
        if not 0 <= index < len(self.levels):
            raise NgffError(
                f"{self.path}: level {index} does not exist (it has {len(self.levels)})"
            )
        return self.levels[index]

    def spacing_um(self, level: int) -> tuple[float, ...]:
        """Voxel size along the spatial axes in micrometers (1.0 where no length unit is given)."""
        scale = self.level(level).scale
        return tuple(
            scale[i] * LENGTH_UNITS_IN_MICROMETER.get(self.axes[i].unit or "", 1.0)
            for i in self.spatial_axes
        )


def open_group(path: str | Path | Location, mode: Literal["r", "r+"] = "r") -> zarr.Group:
    """The zarr group at a path or URL; one line naming the URL and what the server said
    when it cannot be read (engine/io/location.py)."""
    where = Location.parse(path)
    if where.is_local:
        where.check_reachable()
    try:
        return zarr.open_group(where.zarr_url(), mode=mode)
    except Exception as exc:  # noqa: BLE001 (a remote store raises its client's errors)
        if not where.is_local:
            where.check_reachable()  # names the URL and what the server said
        if not isinstance(exc, OSError | ValueError | zarr.errors.BaseZarrError):
            raise
        raise NgffError(f"{where}: not a zarr group ({exc})") from exc


def read_image(path: str | Path | Location, validate: bool = True) -> ImageMeta:
    """An image's metadata; `validate=False` skips the ome-zarr-models check (for label
    images, read as the plain multiscales they are)."""
    where = Location.parse(path)
    path = str(where)
    group = open_group(where)
    attrs = group.attrs.asdict()
    version, ome = _ome_attributes(path, attrs)
    multiscales = ome.get("multiscales")
    if not isinstance(multiscales, list) or not multiscales:
        raise NgffError(f"{path}: not an OME-Zarr image (no 'multiscales' in its attributes)")
    multiscale = multiscales[0]
    axes = _axes(path, multiscale)
    levels = tuple(
        _level(path, group, ds, multiscale, len(axes)) for ds in _datasets(path, multiscale)
    )
    if validate:
        _validate(path, group, version)
    return ImageMeta(str(path), version, axes, levels, multiscale.get("name"), where)


def _ome_attributes(path: str | Path, attrs: dict[str, Any]) -> tuple[Version, dict[str, Any]]:
    if "ome" in attrs:
        version = attrs["ome"].get("version")
        if version != "0.5":
            raise NgffError(f"{path}: unsupported OME-Zarr version {version!r} (0.4 and 0.5 are)")
        return "0.5", attrs["ome"]
    multiscales = attrs.get("multiscales")
    if isinstance(multiscales, list) and multiscales:
        version = multiscales[0].get("version")
        if version != "0.4":
            raise NgffError(f"{path}: unsupported OME-Zarr version {version!r} (0.4 and 0.5 are)")
        return "0.4", attrs
    raise NgffError(f"{path}: not an OME-Zarr image (no 'multiscales' in its attributes)")


def _axes(path: str | Path, multiscale: dict[str, Any]) -> tuple[Axis, ...]:
    raw = multiscale.get("axes")
    if not isinstance(raw, list) or not raw:
        raise NgffError(f"{path}: multiscales has no 'axes'")
    try:
        return tuple(Axis(a["name"], a.get("type"), a.get("unit")) for a in raw)
    except (TypeError, KeyError) as exc:
        raise NgffError(f"{path}: malformed 'axes' entry ({exc})") from exc


def _datasets(path: str | Path, multiscale: dict[str, Any]) -> list[dict[str, Any]]:
    datasets = multiscale.get("datasets")
    if not isinstance(datasets, list) or not datasets:
        raise NgffError(f"{path}: multiscales has no 'datasets'")
    return datasets


def _transform(
    transforms: list[dict[str, Any]] | None, kind: str, ndim: int, where: str = ""
) -> tuple[float, ...]:
    """A dataset's (or the multiscale's) `kind` transform, one number per axis."""
    for t in transforms or []:
        if isinstance(t, dict) and t.get("type") == kind:
            try:
                values = tuple(float(v) for v in t[kind])
            except (KeyError, TypeError, ValueError):
                raise NgffError(
                    f"{where}: '{kind}' is not a list of numbers: {t.get(kind)!r}"
                ) from None
            if len(values) != ndim:
                raise NgffError(
                    f"{where}: '{kind}' has {len(values)} values for {ndim} axes: {list(values)}"
                )
            return values
    return (1.0,) * ndim if kind == "scale" else (0.0,) * ndim


def _level(
    path: str | Path,
    group: zarr.Group,
    dataset: dict[str, Any],
    multiscale: dict[str, Any],
    ndim: int,
) -> Level:
    level_path = dataset.get("path")
    if not isinstance(level_path, str):
        raise NgffError(f"{path}: a multiscales dataset has no 'path'")
    try:
        array = group[level_path]
    except KeyError:
        raise NgffError(
            f"{path}: level array '{level_path}' listed in multiscales is missing"
        ) from None
    except (ValueError, zarr.errors.BaseZarrError) as exc:  # its zarr.json/.zarray is broken
        metadata = "zarr.json" if group.metadata.zarr_format == 3 else ".zarray"
        raise NgffError(
            f"{Path(path) / level_path / metadata}: unreadable array metadata "
            f"({type(exc).__name__}: {exc})"
        ) from None
    if not isinstance(array, zarr.Array):
        raise NgffError(f"{path}: '{level_path}' is a group, not an array")
    if array.ndim != ndim:
        raise NgffError(f"{path}/{level_path}: array has {array.ndim} dimensions but {ndim} axes")
    where = f"{path}: dataset '{level_path}'"
    scale = _transform(dataset.get("coordinateTransformations"), "scale", ndim, where)
    translation = _transform(dataset.get("coordinateTransformations"), "translation", ndim, where)
    global_transforms = multiscale.get("coordinateTransformations")
    where = f"{path}: multiscales coordinateTransformations"
    g_scale = _transform(global_transforms, "scale", ndim, where)
    g_translation = _transform(global_transforms, "translation", ndim, where)
    return Level(
        path=level_path,
        shape=tuple(int(s) for s in array.shape),
        chunks=tuple(int(c) for c in array.chunks),
        dtype=str(np.dtype(array.dtype)),
        scale=tuple(s * g for s, g in zip(scale, g_scale, strict=True)),
        translation=tuple(
            t * g + gt for t, g, gt in zip(translation, g_scale, g_translation, strict=True)
        ),
        shards=tuple(int(s) for s in array.shards) if getattr(array, "shards", None) else None,
    )


def _validate(path: str | Path, group: zarr.Group, version: Version) -> None:
    """Validate the image's (and its `labels/` listing's) attributes with ome-zarr-models.

    Attributes only, not the whole-group models (`Image.from_zarr`): those are pydantic
    generics over pydantic-zarr's v2 and v3 specs, and once another library (ngio)
    has imported the v3 models first, the v0.4 `Image` resolves its members to the v3
    classes and rejects every 0.4 image (`members.0.GroupSpec: Input should be a valid
    dictionary or instance of GroupSpec`; ome-zarr-models 1.7, pydantic-zarr 0.9.2).
    What the group models add, that each listed level is an array with one dimension
    per axis, `_level` checks above. The error locations are the same as before (the
    group models validate the attributes first, with these very classes)."""
    attrs = group.attrs.asdict()
    checks: list[tuple[str, str, dict[str, Any]]] = [
        ("", "image", attrs.get("ome", {}) if version == "0.5" else attrs)
    ]
    labels = group.get("labels")
    if isinstance(labels, zarr.Group):
        listing = labels.attrs.asdict()
        listing = listing.get("ome", {}) if version == "0.5" else listing
        checks.append(("labels.", "labels", listing))
    key = content_key(version, checks)
    if accepted_before(key):  # engine/io/validated.py
        return
    models = _models(version)
    for prefix, name, values in checks:
        model = models[name]
        try:
            model.model_validate(values)
        except pydantic.ValidationError as exc:
            first = exc.errors()[0]
            where = prefix + ".".join(str(p) for p in first.get("loc", ()))
            raise NgffError(
                f"{path}: invalid OME-Zarr {version} metadata at {where}: {first['msg']}"
            ) from exc
        except (ValueError, RuntimeError, KeyError) as exc:
            raise NgffError(f"{path}: invalid OME-Zarr {version} image: {exc}") from exc
    remember(key)


def _models(version: Version) -> dict[str, Any]:
    """ome-zarr-models' attribute models of an NGFF version, imported when first needed
    (engine/io/validated.py)."""
    if version == "0.5":
        from ome_zarr_models.v05.image import ImageAttrs
        from ome_zarr_models.v05.labels import LabelsAttrs
    else:
        from ome_zarr_models.v04.image import ImageAttrs
        from ome_zarr_models.v04.labels import LabelsAttrs
    return {"image": ImageAttrs, "labels": LabelsAttrs}
