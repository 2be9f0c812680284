"""The layout hash: what a run's chunk results depend on, so that done markers are only
trusted by a plan that would compute the same chunks (engine/state/markers.py)."""

from __future__ import annotations

import hashlib
from typing import Any

from engine.plan.types import Plan


def layout_hash(plan: Plan) -> str:
    """A hash of what a run's chunk results depend on: per stage its kind, chain (step
    configs), source, target and its tasks' grid (which gives every task's boxes); the
    chunking; the ROI; the outputs' config hashes. The run id (in scratch paths) is left
    out, so a resumed run matches.

    Per-chunk done markers carry it: a marker is only trusted by a plan with the same hash.
    """
    digest = hashlib.sha256()

    def add(value: Any) -> None:
        digest.update(str(value).replace(plan.scratch, "<scratch>").encode())
        digest.update(b"\0")

    add((plan.level, plan.roi, plan.axes, plan.spatial, plan.chunks))
    add(sorted((o.path, o.config_hash, o.dtype) for o in plan.outputs))
    if plan.reused:
        add(sorted((o.path, o.config_hash) for o in plan.reused))
    for stage in plan.stages:
        add((stage.name, stage.kind, stage.source, stage.target, stage.target_dtype))
        add((stage.chain, stage.after, stage.pass_no, stage.level, stage.connectivity))
        add(stage.labels)
        if stage.region is not None:
            add(stage.region)
        add(stage.tasks)
    return digest.hexdigest()[:16]
