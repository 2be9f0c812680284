"""Evaluation tables on the driver, and `diff` of two label images.

An evaluation table (`op: evaluate`) holds one row of scores (tasks/evaluate.py) per ROI
it was run on, named by the ROI in pixels of the processing level
(`z=0:64,y=100:356,x=40:296`): `--update` on another ROI adds a row, a run on the same
ROI replaces its row. `diff` compares two label images of the zarr (versions of one
output, or an output and the truth) with the same scores, computed as a run computes
them: one task per chunk on the cluster, added up on the driver.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from engine.core.errors import NgffError
from engine.core.geometry import Roi
from engine.execute.executor import Executor
from engine.execute.run_pool import task_pool
from engine.io.existing import read_label_image
from engine.io.location import Location, Workspace
from engine.io.metadata import ImageMeta, open_group, read_image
from engine.io.ngff_write import listed, output_path
from engine.io.rois import resolve_roi, roi_spec
from engine.io.tables import read_rows
from engine.plan.compiler import comparison_plan
from tasks.evaluate import Scores, scores


def roi_key(roi: Roi, axes: Sequence[str]) -> str:
    """The row name of an ROI: `axis=start:stop` per axis (as `--roi` accepts it)."""
    return ",".join(
        f"{a}={int(s)}:{int(e)}" for a, s, e in zip(axes, roi.start, roi.stop, strict=True)
    )


def evaluation_attrs(labels: str, reference: str) -> dict[str, Any]:
    """Table attributes: ngio's generic table; paths as the feature tables' `region`."""
    return {
        "type": "generic_table",
        "table_version": "1",
        "backend": "anndata",
        "index_key": "roi",
        "index_type": "str",
        "region": {"path": f"../{labels}"},
        "reference": {"path": f"../{reference}"},
    }


def stored_scores(table: str | Path, key: str) -> Scores | None:
    """The row of ROI `key` in an evaluation table, if it has one."""
    names, columns, values = read_rows(table)
    hits = [i for i, name in enumerate(names) if name == key]
    return Scores.from_row(columns, values[hits[0]]) if hits else None


def diff(
    image: str | Path,
    labels: str,
    reference: str,
    roi: str | None = None,
    workers: int | None = None,
    scheduler: str | None = None,
    warm: bool | None = None,
    idle_timeout: float | None = None,
    output: str | Path | Location | None = None,
) -> Scores:
    """Scores of `labels/<labels>` against `labels/<reference>` over the whole label image,
    or an ROI: a name from the image's ROI tables, or boxes as `--roi` takes them. Local
    workers are the warm engine's, as for `run`. `output`: an output store holding label
    images (looked up there first, then in the image)."""
    meta, box, a, b = _diff_inputs(image, labels, reference, roi, output)
    ws = Workspace.of(meta.location, Location.parse(output) if output is not None else None)
    found_a, found_b = output_path("label", labels), output_path("label", reference)
    plan = comparison_plan(meta.path, (found_a, a), (found_b, b), box)
    with task_pool(workers, scheduler, warm=warm, idle_timeout=idle_timeout) as pool:
        executor = Executor(pool, ws, plan, lambda *_: 0)
        executor.run()
    return scores(executor.evaluations["diff"])


def diff_roi(
    image: str | Path,
    labels: str,
    reference: str,
    roi: str | None = None,
    output: str | Path | Location | None = None,
) -> Roi:
    """The box `diff` scores (level 0 of the label images), to say which ROI was scored."""
    return _diff_inputs(image, labels, reference, roi, output)[1]


def _diff_inputs(
    image: str | Path,
    labels: str,
    reference: str,
    roi: str | None,
    output: str | Path | Location | None = None,
) -> tuple[ImageMeta, Roi, ImageMeta, ImageMeta]:
    meta = read_image(image)
    store = Location.parse(output) if output is not None else None
    found = {}
    for name in (labels, reference):
        label = read_label_image(meta, name, store)
        if label is None:
            known = ", ".join(listed(open_group(meta.path), "labels", meta.version)) or "none"
            raise NgffError(f"{meta.path}/labels/{name}: no such label image (labels: {known})")
        found[name] = label
    a, b = found[labels], found[reference]
    if a.axis_names != b.axis_names or a.levels[0].shape != b.levels[0].shape:
        raise NgffError(
            f"labels/{labels} has shape {list(a.levels[0].shape)} (axes {list(a.axis_names)}), "
            f"labels/{reference} has {list(b.levels[0].shape)} (axes {list(b.axis_names)}): "
            "diff compares label images of one shape"
        )
    # a name from the image's ROI tables, or boxes as --roi takes them, on the labels' grid
    name, spec = roi_spec(roi, meta, store=store)
    return meta, resolve_roi(spec, a, 0, name), a, b
