"""A PNG of an ROI for a person to look at: the image, contrast-stretched, with label
outlines in colour, and a caption that says what it shows.

Only the ROI is read (with zarr directly, one z chunk at a time), at one level; t and c
take the ROI's first index. Grey values are stretched from the 1st to the 99.8th
percentile.

- What is shown of a 3D ROI: one z plane (`plane`), the maximum projection (`max`), or
  by default the projection unless the labels' outlines would overlap in it (two ids on
  one pixel along z: nuclei from other planes drawn over each other, background
  scribbles over nuclei); then the plane through the ROI's centre. The caption says which.
- Scale: the picture is enlarged by an integer factor, nearest neighbour (default: the
  smallest that makes the long side at least 512 px; a 128 px ROI was too small on a
  screen). Labels are enlarged before their outlines are found, so outlines stay one
  pixel wide and follow the enlarged objects.
- Instance labels: outlines (skimage.segmentation.find_boundaries, inner mode), one
  colour per id, spread over hues by the golden ratio so neighbouring ids differ.
- Class labels (few values, e.g. scribbles 1 = background, 2 = nucleus; names from the
  label image's `ngff_engine.sample.classes` when it has them): every labelled pixel in
  its class's colour, with a legend.
- Comparison (`reference`): objects are matched over the whole ROI (all its planes) at
  IoU >= 0.5, exactly as the evaluate op scores them (tasks/evaluate.py); matched ones are
  true positives, other predictions false positives, unmatched reference objects false
  negatives, each outlined in its colour, with a legend and their counts.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import zarr

from engine.core.errors import ConfigError, NgffError
from engine.core.geometry import Roi
from engine.core.pipeline import RoiSpec
from engine.io.location import Location, Workspace
from engine.io.metadata import ImageMeta, read_image
from engine.io.ngff_write import read_ome
from engine.io.preview_caption import LegendEntry, with_caption
from engine.io.rois import user_roi

LOW, HIGH = 1.0, 99.8  # percentiles of the contrast stretch


MIN_SIDE = 512  # default scale: the long side at least this many pixels
MAX_CLASSES = 8  # uint8 label images with at most this many values are classes
CLASS_COLOURS = [(0, 160, 255), (255, 170, 0), (230, 50, 230), (80, 220, 80), (255, 80, 80),
                 (160, 120, 255), (255, 255, 90), (90, 255, 255)]  # fmt: skip
TRUE_POSITIVE = (40, 220, 40)  # green
FALSE_POSITIVE = (255, 40, 200)  # magenta
FALSE_NEGATIVE = (255, 190, 0)  # amber: apart from both for the colour-blind, too


@dataclass(frozen=True)
class Preview:
    rgb: np.ndarray  # (y, x, 3) uint8: the picture, without the caption
    roi: Roi
    level: int
    labels: str | None
    n_labels: int  # label ids drawn (outlines or pixels visible in the picture)
    mode: str  # "max", "plane Z" or "plane" (a 2D image)
    scale: int = 1
    in_roi: int = 0  # distinct label ids in the whole ROI (all of its z)
    counts: dict[str, int] | None = None  # comparison: true/false positives, false negatives
    classes: dict[int, str] | None = None  # class labels: value -> name
    png: np.ndarray | None = None  # the picture with its caption, as written
    centre: bool = False  # the plane through the ROI's centre, chosen as outlines overlap
    densest: bool = False  # class labels: the plane with the most labelled pixels, chosen so


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
    reference: str | None = None,
    scale: int | None = None,
    projection: bool = False,
) -> Preview:
    """The RGB picture of `roi` (a name from the image's ROI tables, `z0:z1,y0:y1,x0:x1`
    in pixels of `level`, a RoiSpec/dict, or None for the whole image) with `labels/<labels>`
    drawn on it, compared with `labels/<reference>` if given. `plane` is a z index at
    `level`; `projection` asks for the maximum projection; neither: see the module's
    docstring. `scale`: an integer enlargement (default: long side >= 512 px). `path` may
    be a run's Workspace: label images are then looked up in its output store first."""
    ws = path if isinstance(path, Workspace) else Workspace.of(Location.parse(path))
    path = ws.image
    meta = read_image(path)
    box = user_roi(roi, meta, level, text_level=level)  # text: pixels of this level
    names = meta.axis_names
    ranges = {n: (a, b) for n, a, b in zip(names, box.start, box.stop, strict=True)}
    if "y" not in names or "x" not in names:
        raise NgffError(f"{path}: a preview needs y and x axes, the image has {list(names)}")
    if reference is not None and labels is None:
        raise ConfigError("--reference: give --labels too (the labels compared with it)")
    if scale is not None and not 1 <= scale <= 64:
        raise ConfigError(f"--scale {scale}: give an integer from 1 to 64")
    if plane is not None:
        if "z" not in names:
            raise ConfigError(f"--plane {plane}: the image has no z axis")
        z0, z1 = ranges["z"]
        if not z0 <= plane < z1:
            raise ConfigError(f"--plane {plane} is outside the ROI's z range {z0}..{z1 - 1}")
    root = zarr.open_group(path.zarr_url(), mode="r")
    store = zarr.open_group(ws.output.zarr_url(), mode="r") if ws.separate else None

    def lroot(name: str | None) -> zarr.Group:
        """Where a label image is: a separate output store first, then the image."""
        found = store is not None and name and ws.output.is_group(f"labels/{name}")
        return store if found else root

    has_z = "z" in names
    ids3d = (
        _label_volume(lroot(labels), meta, labels, level, ranges) if labels is not None else None
    )
    ref3d = _label_volume(lroot(reference), meta, reference, level, ranges) if reference else None
    mode, centre, densest = "plane", False, False
    if has_z:
        z0, z1 = ranges["z"]
        if plane is None and not projection and ids3d is not None and z1 - z0 > 1:
            if _overlaps(ids3d) or (ref3d is not None and _overlaps(ref3d)):
                plane, centre = (z0 + z1) // 2, True
                if ref3d is None and _classes(lroot(labels), labels, ids3d) is not None:
                    # sparse class labels (scribbles) may miss the centre: their fullest plane
                    plane = z0 + int(np.argmax((ids3d != 0).sum(axis=(1, 2))))
                    densest = True
        mode = "max" if plane is None else f"plane {plane}"
    grey = stretch(_project(root[meta.level(level).path], names, ranges, plane))
    factor = scale or max(1, -(-MIN_SIDE // max(grey.shape)))
    rgb = np.repeat(_enlarge(grey, factor)[..., None], 3, axis=2)
    n_labels, in_roi, counts, classes = 0, 0, None, None
    if ids3d is not None:
        z0 = ranges["z"][0] if has_z else 0
        ids = _view(ids3d, plane, z0)
        in_roi = len(np.unique(ids3d)) - int((ids3d == 0).any())
        if ref3d is not None:
            counts = _draw_comparison(rgb, ids3d, ref3d, ids, _view(ref3d, plane, z0), factor)
            n_labels = counts["true positives"] + counts["false positives"]
        else:
            classes = _classes(lroot(labels), labels, ids3d)
            if classes is not None:
                n_labels = _draw_classes(rgb, _enlarge(ids, factor), classes)
            else:
                n_labels = _draw_outlines(rgb, _enlarge(ids, factor))
    return Preview(
        rgb,
        box,
        level,
        labels,
        n_labels,
        mode,
        factor,
        in_roi,
        counts,
        classes,
        None,
        centre and not densest,
        densest,
    )


def _enlarge(plane: np.ndarray, factor: int) -> np.ndarray:
    """Nearest-neighbour enlargement by an integer factor."""
    if factor == 1:
        return plane
    return np.repeat(np.repeat(plane, factor, axis=0), factor, axis=1)


def _overlaps(ids: np.ndarray) -> bool:
    """Whether two different non-zero ids lie on one (y, x) line along z (axis 0)."""
    big = np.iinfo(ids.dtype).max if ids.dtype.kind in "ui" else ids.max()
    low = np.where(ids == 0, big, ids).min(axis=0)
    high = ids.max(axis=0)
    return bool(((high != 0) & (low != high)).any())


def _view(volume: np.ndarray, plane: int | None, z0: int) -> np.ndarray:
    """(y, x) of a (z, y, x) or (y, x) label volume: a plane, or the maximum over z."""
    if volume.ndim == 2:
        return volume
    return volume[plane - z0] if plane is not None else volume.max(axis=0)


def _outline(ids: np.ndarray) -> np.ndarray:
    from skimage.segmentation import find_boundaries

    return find_boundaries(ids, mode="inner") & (ids != 0)


def _draw_outlines(rgb: np.ndarray, ids: np.ndarray) -> int:
    """Outlines of each id in its colour; returns how many ids have outline pixels."""
    edges = _outline(ids)
    found = np.unique(ids[edges])
    if len(found):
        rgb[edges] = label_colour(found)[np.searchsorted(found, ids[edges])]
    return len(found)


def _classes(root: zarr.Group, name: str | None, ids3d: np.ndarray) -> dict[int, str] | None:
    """Class value -> name for a class label image (see the module docstring), else None."""
    attrs = root[f"labels/{name}"].attrs.asdict().get("ngff_engine", {})
    named = attrs.get("sample", {}).get("classes") if isinstance(attrs, dict) else None
    if named:
        return {int(v): str(k) for k, v in sorted(named.items(), key=lambda kv: kv[1])}
    values = np.unique(ids3d)
    values = values[values != 0]
    if ids3d.dtype == np.uint8 and len(values) <= MAX_CLASSES:
        return {int(v): f"class {int(v)}" for v in values}
    return None


def _draw_classes(rgb: np.ndarray, ids: np.ndarray, classes: dict[int, str]) -> int:
    """Every labelled pixel in its class's colour; returns how many classes show."""
    shown = 0
    for value in classes:
        where = ids == value
        if where.any():
            rgb[where] = class_colour(value)
            shown += 1
    return shown


def class_colour(value: int) -> tuple[int, int, int]:
    return CLASS_COLOURS[(value - 1) % len(CLASS_COLOURS)]


def _draw_comparison(
    rgb: np.ndarray,
    pred3d: np.ndarray,
    ref3d: np.ndarray,
    pred: np.ndarray,
    ref: np.ndarray,
    factor: int,
) -> dict[str, int]:
    """Outlines: matched predictions (true positives), other predictions (false
    positives), unmatched reference objects (false negatives); matched in 3D over the
    ROI as the evaluate op does. Returns the three counts over the ROI."""
    from tasks.evaluate import matched_pairs, pair_counts

    matched_pred, matched_ref = matched_pairs(pair_counts(pred3d, ref3d))
    pred_ids = np.unique(pred3d)
    ref_ids = np.unique(ref3d)
    pred_ids, ref_ids = pred_ids[pred_ids != 0], ref_ids[ref_ids != 0]
    missed = np.setdiff1d(ref_ids, matched_ref)
    ref_big = _enlarge(np.where(np.isin(ref, missed), ref, 0), factor)
    rgb[_outline(ref_big)] = FALSE_NEGATIVE
    pred_big = _enlarge(pred, factor)
    edges = _outline(pred_big)
    hit = np.isin(pred_big, matched_pred)
    rgb[edges & hit] = TRUE_POSITIVE
    rgb[edges & ~hit] = FALSE_POSITIVE
    return {
        "true positives": len(np.unique(matched_pred)),
        "false positives": len(pred_ids) - len(np.unique(matched_pred)),
        "false negatives": len(missed),
    }


def _label_volume(
    root: zarr.Group,
    meta: ImageMeta,
    name: str,
    level: int,
    ranges: dict[str, tuple[int, int]],
) -> np.ndarray:
    """The ROI of `labels/<name>` as (z, y, x) or (y, x): t and c at the ROI's first index."""
    array, axes = _label_array(root, meta, name, level)
    index = []
    for n in axes:
        start, stop = ranges.get(n, (0, array.shape[axes.index(n)]))
        index.append(start if n in ("t", "c") else slice(start, stop))
    return np.asarray(array[tuple(index)])


def caption(
    result: Preview, path: str | Path | Location | Workspace
) -> tuple[list[str], list[LegendEntry]]:
    """The caption's lines and the legend of a preview (engine/io/preview_caption.py)."""
    image = path.image if isinstance(path, Workspace) else Location.parse(path)
    where = f"{image.name}  ROI {result.roi}, scale {result.scale}x"
    if result.mode == "max":
        z = result.roi.start[0], result.roi.stop[0] - 1
        shown = f"maximum projection over z {z[0]}..{z[1]}"
    elif result.mode == "plane":
        shown = "the image's plane (2D)"
    else:
        shown = f"plane z={result.mode.split()[-1]}"
        if result.centre:
            shown += " (the ROI's centre: outlines would overlap in a projection over z)"
        if result.densest:
            shown += " (most labelled pixels; labels would overlap in a projection over z)"
    lines = [where, shown]
    legend: list[LegendEntry] = []
    if result.counts is not None:
        lines.append(
            f"labels/{result.labels} against the reference: objects matched at IoU >= 0.5 "
            "over the whole ROI (all its planes), as evaluate scores them; counts over the ROI:"
        )
        legend = [
            LegendEntry(TRUE_POSITIVE, f"true positive ({result.counts['true positives']})"),
            LegendEntry(FALSE_POSITIVE, f"false positive ({result.counts['false positives']})"),
            LegendEntry(FALSE_NEGATIVE, f"false negative ({result.counts['false negatives']})"),
        ]
    elif result.classes is not None:
        lines.append(f"labels/{result.labels}: classes")
        legend = [LegendEntry(class_colour(v), f"{v} {n}") for v, n in result.classes.items()]
    elif result.labels is not None:
        lines.append(
            f"labels/{result.labels}: {result.n_labels} objects outlined, "
            f"{result.in_roi} in the ROI; one colour per object"
        )
    return lines, legend


def _label_array(
    root: zarr.Group, meta: ImageMeta, name: str, level: int
) -> tuple[zarr.Array, tuple[str, ...]]:
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
    return array, axes


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
    reference: str | None = None,
    scale: int | None = None,
    projection: bool = False,
    output: str | Path | Location | None = None,
) -> Preview:
    """Render (see `render_preview`), add the caption and write the PNG to `out`;
    `output`: the output store where the label images are (when not in the image)."""
    if output is not None and not isinstance(path, Workspace):
        path = Workspace.of(Location.parse(path), Location.parse(output))
    result = render_preview(path, roi, labels, plane, level, reference, scale, projection)
    lines, legend = caption(result, path)
    png = with_caption(result.rgb, lines, legend)
    write_png(png, out)
    return replace(result, png=png)
