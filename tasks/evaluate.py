"""Scores of a label image against a reference label image, exact across chunk borders.

Everything the scores need is in one sparse contingency table: for each pair (predicted
id, reference id) that shares voxels, how many (0 is background on either side; pairs
with background on both sides are left out). Each chunk makes its table
(`pair_counts`), tables of any chunks add up exactly (`combine_counts`), and the scores
come from the combined table (`scores`). Per-object voxel counts are its row and column
sums (an object's voxels over background count, via the pairs with id 0), so no second
table is needed. Only one row per pair that meets in a chunk ever leaves a worker.

Scores:
- pixel Dice and IoU of the foregrounds (non-zero voxels) of both images;
- objects: a predicted and a reference object match when their IoU is at least 0.5
  (tested in integers: 3 * shared >= |p| + |r|). At that threshold an object has one
  candidate, except when the other side holds it split exactly in halves (IoU 0.5
  each); then the pair with the higher IoU, then the lower ids, wins, which is also a
  maximum matching there. Precision = matches / predicted objects, recall = matches /
  reference objects, F1 = 2 matches / (predicted + reference objects).

A ratio whose denominator is 0 (nothing predicted, nothing in the reference) is NaN.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np

from tasks.measure import group_starts
from tasks.spec import Params, table_op

Counts = dict[str, np.ndarray]  # "pred", "ref" (uint64 ids), "count" (int64 voxels)
MATCH_IOU = 0.5


class EvaluateParams(Params):
    """`reference`: a label image in the zarr (`labels/<reference>`) or a step of the
    pipeline that writes a label output. `preview`: also write a PNG of the ROI with the
    evaluated labels outlined, for a person to look at after each run."""

    reference: str
    preview: bool = False


@dataclass(frozen=True)
class Scores:
    dice: float
    iou: float
    precision: float
    recall: float
    f1: float
    true_positives: int
    predicted_objects: int
    reference_objects: int
    overlap_voxels: int
    predicted_voxels: int
    reference_voxels: int

    @classmethod
    def columns(cls) -> list[str]:
        return [f.name for f in fields(cls)]

    def values(self) -> list[float]:
        return [float(v) for v in asdict(self).values()]

    @classmethod
    def from_row(cls, columns: Sequence[str], values: Sequence[float]) -> Scores:
        """Back from a table row (where counts are float64 too)."""
        row = dict(zip(columns, values, strict=True))
        return cls(
            **{
                f.name: int(row[f.name]) if f.type == "int" else float(row[f.name])
                for f in fields(cls)
            }
        )

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Scores:
        return cls.from_row(list(data), [math.nan if v is None else v for v in data.values()])

    def to_json(self) -> dict[str, Any]:
        """NaN (an empty denominator) becomes null: JSON has no NaN."""
        return {
            k: None if isinstance(v, float) and math.isnan(v) else v
            for k, v in asdict(self).items()
        }


def empty_counts() -> Counts:
    return {
        "pred": np.zeros(0, dtype=np.uint64),
        "ref": np.zeros(0, dtype=np.uint64),
        "count": np.zeros(0, dtype=np.int64),
    }


def pair_counts(pred: np.ndarray, ref: np.ndarray) -> Counts:
    """The contingency table of one block: voxels per (pred id, ref id), sorted, unique."""
    if pred.shape != ref.shape:
        raise ValueError(f"labels shape {pred.shape} differs from the reference's {ref.shape}")
    p, r = pred.ravel(), ref.ravel()
    either = (p != 0) | (r != 0)
    p, r = p[either].astype(np.uint64), r[either].astype(np.uint64)
    if len(p) == 0:
        return empty_counts()
    if int(p.max()) < 2**32 and int(r.max()) < 2**32:
        # one sort of one packed key instead of a sort of pairs: the common case, twice as fast
        keys, count = np.unique((p << np.uint64(32)) | r, return_counts=True)
        return {
            "pred": keys >> np.uint64(32),
            "ref": keys & np.uint64(2**32 - 1),
            "count": count.astype(np.int64),
        }
    return _merge(p, r, np.ones(len(p), dtype=np.int64))


def combine_counts(parts: Sequence[Counts]) -> Counts:
    """One table from the tables of many blocks (any order; a pair may be in several)."""
    parts = [p for p in parts if p is not None and len(p["count"])]
    if not parts:
        return empty_counts()
    if len(parts) == 1:
        return parts[0]
    return _merge(*(np.concatenate([p[k] for p in parts]) for k in ("pred", "ref", "count")))


def _merge(pred: np.ndarray, ref: np.ndarray, count: np.ndarray) -> Counts:
    """Sort pairs by (pred, ref) and add the counts of equal pairs."""
    order = np.lexsort((ref, pred))
    pred, ref, count = pred[order], ref[order], count[order]
    new = np.ones(len(pred), dtype=bool)
    new[1:] = (pred[1:] != pred[:-1]) | (ref[1:] != ref[:-1])
    starts = np.flatnonzero(new)
    return {"pred": pred[starts], "ref": ref[starts], "count": np.add.reduceat(count, starts)}


def _sizes(ids: np.ndarray, count: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(distinct non-zero ids, their voxel counts) from one side of a contingency table."""
    keep = ids != 0
    ids, count = ids[keep], count[keep]
    order = np.argsort(ids, kind="stable")
    ids, count = ids[order], count[order]
    starts = group_starts(ids)
    if len(starts) == 0:
        return ids, count
    return ids[starts], np.add.reduceat(count, starts)


def _ratio(num: float, den: float) -> float:
    return float(num) / float(den) if den else math.nan


def matched_pairs(table: Counts) -> tuple[np.ndarray, np.ndarray]:
    """(predicted ids, reference ids) of the objects matched at IoU >= 0.5: the true
    positives `scores` counts (engine/io/preview.py colours them)."""
    pred, ref, count = table["pred"], table["ref"], table["count"]
    both = (pred != 0) & (ref != 0)
    p_ids, p_size = _sizes(pred, count)
    r_ids, r_size = _sizes(ref, count)
    pp, rr, shared = pred[both], ref[both], count[both]
    sp = p_size[np.searchsorted(p_ids, pp)]
    sr = r_size[np.searchsorted(r_ids, rr)]
    candidate = np.flatnonzero(3 * shared >= sp + sr)  # IoU >= 0.5, exactly
    iou = shared[candidate] / (sp[candidate] + sr[candidate] - shared[candidate])
    order = candidate[np.lexsort((rr[candidate], pp[candidate], -iou))]
    _, first = np.unique(pp[order], return_index=True)
    order = order[np.sort(first)]
    return pp[order], rr[order]


def scores(table: Counts) -> Scores:
    """Pixel and object scores from a combined contingency table."""
    pred, ref, count = table["pred"], table["ref"], table["count"]
    both = (pred != 0) & (ref != 0)
    overlap = int(count[both].sum())
    pred_voxels = int(count[pred != 0].sum())
    ref_voxels = int(count[ref != 0].sum())
    p_ids = _sizes(pred, count)[0]
    r_ids = _sizes(ref, count)[0]
    matches = len(np.unique(matched_pairs(table)[1]))
    n_pred, n_ref = len(p_ids), len(r_ids)
    return Scores(
        dice=_ratio(2 * overlap, pred_voxels + ref_voxels),
        iou=_ratio(overlap, pred_voxels + ref_voxels - overlap),
        precision=_ratio(matches, n_pred),
        recall=_ratio(matches, n_ref),
        f1=_ratio(2 * matches, n_pred + n_ref),
        true_positives=matches,
        predicted_objects=n_pred,
        reference_objects=n_ref,
        overlap_voxels=overlap,
        predicted_voxels=pred_voxels,
        reference_voxels=ref_voxels,
    )


EVALUATE = table_op(
    "evaluate",
    "1",
    EvaluateParams,
    "Scores of a label step against a reference label image: pixel Dice and IoU, object "
    "precision, recall and F1 at IoU 0.5, object counts; output kind 'table'.",
)
