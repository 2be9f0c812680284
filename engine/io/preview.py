"""A PNG of an ROI for a person to look at: the image, contrast-stretched, with label
outlines in colour.

Only the ROI is read (with zarr directly, one z chunk at a time), at one level. The
image is projected over z (maximum) or one z plane is taken; t and c take the ROI's
first index. Grey values are stretched from the 1st to the 99.8th percentile. Labels are
projected the same way (maximum id along z, or the same plane); their outlines
(skimage.segmentation.find_boundaries, inner mode) get one colour per label id,
spread over hues by the golden ratio so neighbouring ids look different.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import zarr

from engine.core.errors import ConfigError, NgffError
from engine.core.geometry import Roi
from engine.core.pipeline import RoiSpec
from engine.io.location import Location, Workspace
from engine.io.metadata import ImageMeta, read_image
from engine.io.ngff_write import read_ome
from engine.io.rois import user_roi

LOW, HIGH = 1.0, 99.8  # percentiles of the contrast stretch


@dataclass(frozen=True)
class Preview:
    rgb: np.ndarray  # (y, x, 3) uint8
    roi: Roi
    level: int
    labels: str | None
    n_labels: int  # label ids with outline pixels in the picture
    mode: str  # "max" or "plane Z"


def label_colour(ids: np.ndarray) -> np.ndarray:
    """(n, 3) uint8 colours: hue from id * golden ratio, full saturation and value."""
    hue = np.mod(ids.astype(np.float64) * 0.6180339887498949, 1.0)
    h6 = hue * 6.0
    k = np.floor(h6).astype(np.int64) % 6
    f = h6 - np.floor(h6)
    one, down, up, zero = np.ones_like(f), 1.0 - f, f, np.zeros_like(f)
    table = [
        (one, up, zero),
        (down, one, zero),
        (zero, one, up),
        (zero, down, one),
        (up, zero, one),
        (one, zero, down),
    ]
    rgb = np.zeros((len(ids), 3))
    for sector, (r, g, b) in enumerate(table):
        sel = k == sector
        rgb[sel] = np.stack([r[sel], g[sel], b[sel]], axis=1)
    return np.round(rgb * 255).astype(np.uint8)


def stretch(plane: np.ndarray, low: float = LOW, high: float = HIGH) -> np.ndarray:
    """uint8 grey values, `low`..`high` percentiles mapped to 0..255 (clipped)."""
    values = plane.astype(np.float64)
    lo, hi = np.percentile(values, [low, high])
    if hi <= lo:
        return np.zeros(plane.shape, dtype=np.uint8)
    scaled = np.clip((values - lo) / (hi - lo), 0.0, 1.0)
    return np.round(scaled * 255).astype(np.uint8)


def _project(
    array: zarr.Array,
    names: tuple[str, ...],
    ranges: dict[str, tuple[int, int]],
    plane: int | None,
) -> np.ndarray:
    """(y, x) of `array` (axes `names`) over `ranges`: max over z, or z = `plane`."""
    index: list[int | slice] = []
    for name in names:
        start, stop = ranges.get(name, (0, array.shape[names.index(name)]))
        if name in ("t", "c"):
            index.append(start)
        elif name == "z" and plane is not None:
            index.append(plane)
        else:
            index.append(slice(start, stop))
    if "z" not in names or plane is not None:
        return np.asarray(array[tuple(index)])
    z = names.index("z")
    z0, z1 = ranges["z"]
    step = max(1, array.chunks[z])
    axis = sum(1 for n in names[:z] if n not in ("t", "c"))  # z after indexing t and c
    result = None
    start = z0
    while start < z1:  # one z chunk at a time: memory stays at a chunk's slab
        stop = min(z1, (start // step + 1) * step)
        index[z] = slice(start, stop)
        block = np.asarray(array[tuple(index)]).max(axis=axis)
        result = block if result is None else np.maximum(result, block)
        start = stop
    assert result is not None
    return result


def render_preview(
    path: str | Path | Location | Workspace,
    roi: str | RoiSpec | dict | None = None,
    labels: str | None = None,
    plane: int | None = None,
    level: int = 0,
) -> Preview:
    """The RGB picture of `roi` (a name from the image's ROI tables, `z0:z1,y0:y1,x0:x1`
    in pixels of `level`, a RoiSpec/dict, or None for the whole image) with the outlines
    of `labels/<labels>`. `plane` is a z index at `level` (default: maximum projection
    over the ROI's z). `path` may be a run's Workspace: labels are then looked up in its
    output store first."""
    from skimage.segmentation import find_boundaries

    ws = path if isinstance(path, Workspace) else Workspace.of(Location.parse(path))
    path = ws.image
    meta = read_image(path)
    box = user_roi(roi, meta, level, text_level=level)  # text: pixels of this level
    names = meta.axis_names
    ranges = {n: (a, b) for n, a, b in zip(names, box.start, box.stop, strict=True)}
    if "y" not in names or "x" not in names:
        raise NgffError(f"{path}: a preview needs y and x axes, the image has {list(names)}")
    if plane is not None:
        if "z" not in names:
            raise ConfigError(f"--plane {plane}: the image has no z axis")
        z0, z1 = ranges["z"]
        if not z0 <= plane < z1:
            raise ConfigError(f"--plane {plane} is outside the ROI's z range {z0}..{z1 - 1}")
    root = zarr.open_group(path.zarr_url(), mode="r")
    grey = stretch(_project(root[meta.level(level).path], names, ranges, plane))
    if ws.separate and labels is not None and ws.output.is_group(f"labels/{labels}"):
        root = zarr.open_group(ws.output.zarr_url(), mode="r")
    rgb = np.repeat(grey[..., None], 3, axis=2)
    n_labels = 0
    if labels is not None:
        ids = _label_plane(root, meta, labels, level, ranges, plane)
        edges = find_boundaries(ids, mode="inner") & (ids != 0)
        found = np.unique(ids[edges])
        n_labels = len(found)
        if n_labels:
            colours = label_colour(found)
            rgb[edges] = colours[np.searchsorted(found, ids[edges])]
    mode = "max" if plane is None or "z" not in names else f"plane {plane}"
    return Preview(rgb, box, level, labels, n_labels, mode)


def _label_plane(
    root: zarr.Group,
    meta: ImageMeta,
    name: str,
    level: int,
    ranges: dict[str, tuple[int, int]],
    plane: int | None,
) -> np.ndarray:
    key = f"labels/{name}"
    if key not in root:
        listed = []
        if "labels" in root:
            listed = read_ome(meta.version, root["labels"].attrs.asdict()).get("labels", [])
        known = ", ".join(listed) or "none"
        raise NgffError(f"{meta.path}/{key}: no such label image (labels: {known})")
    group = root[key]
    multiscale = read_ome(meta.version, group.attrs.asdict())["multiscales"][0]
    datasets = multiscale["datasets"]
    if not 0 <= level < len(datasets):
        raise NgffError(f"{meta.path}/{key}: has no level {level} ({len(datasets)} levels)")
    axes = tuple(a["name"] for a in multiscale["axes"])
    array = group[datasets[level]["path"]]
    image_shape = meta.level(level).shape
    for n, s in zip(axes, array.shape, strict=True):
        if n in ("y", "x", "z") and s != image_shape[meta.axis_names.index(n)]:
            raise NgffError(f"{meta.path}/{key}: level {level} does not match the image's shape")
    return _project(array, axes, {n: r for n, r in ranges.items() if n in axes}, plane)


def write_png(rgb: np.ndarray, out: str | Path | Location) -> None:
    """Write the PNG to a local file, or as one object to a remote location."""
    import imageio.v3 as iio

    try:
        if isinstance(out, Location):
            if out.is_local:
                out.local_path.parent.mkdir(parents=True, exist_ok=True)
                iio.imwrite(out.url, rgb, extension=".png")
            else:
                out.write_bytes("", iio.imwrite("<bytes>", rgb, extension=".png"))
            return
        iio.imwrite(str(out), rgb, extension=".png")
    except OSError as exc:
        raise NgffError(f"{out}: cannot write the PNG ({exc})") from None


def preview(
    path: str | Path | Location | Workspace,
    out: str | Path | Location = "preview.png",
    roi: str | RoiSpec | dict | None = None,
    labels: str | None = None,
    plane: int | None = None,
    level: int = 0,
    output: str | Path | Location | None = None,
) -> Preview:
    """Render (see `render_preview`) and write the PNG to `out`; `output`: the output
    store where the labels are (when not in the image)."""
    if output is not None and not isinstance(path, Workspace):
        path = Workspace.of(Location.parse(path), Location.parse(output))
    result = render_preview(path, roi, labels, plane, level)
    write_png(result.rgb, out)
    return result
