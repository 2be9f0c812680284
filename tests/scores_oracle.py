"""The evaluation scores computed the plain way on whole arrays (the oracle the engine's
per-chunk tables must equal), and the standard pipeline scored against a reference: for
test_tables_evaluate.py and test_outputs_versions.py."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import zarr

from engine import Pipeline
from tasks.evaluate import Scores


def oracle(pred: np.ndarray, ref: np.ndarray) -> Scores:
    """The scores from whole arrays, computed the plain way: boolean masks for the pixel
    scores, a dense IoU matrix for objects, matched where IoU >= 0.5 (one per row and
    column: at that threshold a maximum matching, see tasks/evaluate.py)."""
    p, r = pred != 0, ref != 0
    overlap, n_p, n_r = int((p & r).sum()), int(p.sum()), int(r.sum())
    p_ids, r_ids = np.unique(pred[p]), np.unique(ref[r])
    inter = np.zeros((len(p_ids), len(r_ids)), dtype=np.int64)
    both = p & r
    np.add.at(
        inter,
        (np.searchsorted(p_ids, pred[both]), np.searchsorted(r_ids, ref[both])),
        1,
    )
    sp = np.array([(pred == i).sum() for i in p_ids], dtype=np.int64)
    sr = np.array([(ref == i).sum() for i in r_ids], dtype=np.int64)
    union = sp[:, None] + sr[None, :] - inter
    iou = np.where(union > 0, inter / np.maximum(union, 1), 0.0)
    hit = iou >= 0.5
    used_r: set[int] = set()
    tp = 0
    for i in range(len(p_ids)):
        for j in np.argsort(-iou[i], kind="stable"):
            if hit[i, j] and j not in used_r:
                used_r.add(int(j))
                tp += 1
                break

    def ratio(a: float, b: float) -> float:
        return a / b if b else math.nan

    return Scores(
        ratio(2 * overlap, n_p + n_r),
        ratio(overlap, n_p + n_r - overlap),
        ratio(tp, len(p_ids)),
        ratio(tp, len(r_ids)),
        ratio(2 * tp, len(p_ids) + len(r_ids)),
        tp,
        len(p_ids),
        len(r_ids),
        overlap,
        n_p,
        n_r,
    )


def assert_same(got: Scores, want: Scores) -> None:
    for name in Scores.columns():
        a, b = getattr(got, name), getattr(want, name)
        assert (math.isnan(a) and math.isnan(b)) or a == pytest.approx(b, rel=1e-12), name


def nuclei_pipeline(sigma: float = 1.0, reference: str = "truth", **output: str) -> Pipeline:
    return (
        Pipeline()
        .add("smooth", "gaussian", sigma=sigma)
        .add("mask", "threshold", "smooth", method="otsu")
        .add("nuclei", "label", "mask", {"kind": "label", "name": "nuclei", **output})
        .add(
            "eval",
            "evaluate",
            "nuclei",
            {"kind": "table", "name": "nuclei_eval", **output},
            reference=reference,
        )
    )


def labels_of(path: Path, name: str) -> np.ndarray:
    return zarr.open_array(str(path / "labels" / name / "s0"), mode="r")[...]
