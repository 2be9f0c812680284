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

from engine.geometry import Roi
from engine.ngff.tables import read_rows
from tasks.evaluate import Scores


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
