"""Versions of outputs, and reuse of outputs that a run would only compute again.

Naming: the first version of an output keeps its plain name (`labels/nuclei`), later
ones get `.v2`, `.v3`, ... (`labels/nuclei.v2`): plain NGFF names (letters, digits,
`.`), listed in the parent group's attributes like any other output, so every NGFF
reader sees each version as an image of its own, and the unversioned name always is
the first one.

What happens to an output is decided from a snapshot of what the zarr holds
(`Existing`, read by engine/io/existing.py) before anything is planned, so the compiler
stays pure: the same pipeline, ROI and snapshot give the same plan.

- Reuse: a stored version with the same config hash (provenance covers the whole
  upstream chain) that holds this very ROI, written by a run that finished, is read
  as it is instead of being computed again (not with `--overwrite`).
- `versions: keep`: otherwise the version with the same config is written again (as
  any output is: `--update` or `--overwrite`), and with no such version a new one is
  made, linked to the latest one with what changed.
- Without `versions`, the output keeps its one name and the usual conflict rules apply.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from engine.io.metadata import ImageMeta

RoiJson = dict[str, Any]  # {"start": [...], "stop": [...], "level": n}, as output records keep it


def version_name(base: str, number: int) -> str:
    return base if number == 1 else f"{base}.v{number}"


def version_number(base: str, name: str) -> int | None:
    """The version `name` is of `base` (1 for `base` itself), or None for another output."""
    if name == base:
        return 1
    match = re.fullmatch(re.escape(base) + r"\.v(\d+)", name)
    return int(match.group(1)) if match and int(match.group(1)) >= 2 else None


@dataclass(frozen=True)
class StoredOutput:
    """One version of an output as the zarr holds it."""

    name: str
    version: int
    config_hash: str | None  # None: not written by an engine run
    provenance: Mapping[str, Any]
    reusable_rois: tuple[RoiJson, ...]  # ROIs it holds as their runs wrote them
    finished: bool  # the last run that wrote it completed (run records know)
    dtype: str | None = None
    record: Mapping[str, Any] = field(default_factory=dict)  # its `version` record, if any

    def holds(self, roi: RoiJson) -> bool:
        return self.finished and roi in self.reusable_rois


@dataclass(frozen=True)
class Existing:
    """What the zarr holds that a plan may use: label images by name (for references;
    metadata only) and, per output of the pipeline (kind, name), its stored versions."""

    label_names: tuple[str, ...] = ()
    labels: Mapping[str, ImageMeta] = field(default_factory=dict)
    outputs: Mapping[tuple[str, str], tuple[StoredOutput, ...]] = field(default_factory=dict)
    # where trained models are (the output store when separate; None: the image)
    models: str | None = None


@dataclass(frozen=True)
class Decision:
    """Where a step's output goes: `name` on disk; `reuse` when it is read as it is;
    `version` (the record written with it) when versions are kept."""

    name: str
    reuse: StoredOutput | None = None
    version: Mapping[str, Any] | None = None


def decide(
    base: str,
    keep_versions: bool,
    config_hash: str,
    provenance: Mapping[str, Any],
    roi: RoiJson,
    stored: tuple[StoredOutput, ...],
    overwrite: bool,
) -> Decision:
    if not keep_versions:
        stored = tuple(s for s in stored if s.name == base)
    same = [s for s in stored if s.config_hash == config_hash]
    if not overwrite:
        for s in reversed(same):
            if s.holds(roi):
                return Decision(s.name, reuse=s, version=s.record or None)
    if not keep_versions:
        return Decision(base)
    if same:  # this config has a version already: it is written again (--update/--overwrite)
        target = same[-1]
        record = target.record or _record(base, target.version, provenance, stored)
        return Decision(target.name, version=record)
    number = max((s.version for s in stored), default=0) + 1
    return Decision(version_name(base, number), version=_record(base, number, provenance, stored))


def _record(
    base: str, number: int, provenance: Mapping[str, Any], stored: tuple[StoredOutput, ...]
) -> dict[str, Any]:
    """A version's record: its number, the version before it and what changed since."""
    before = [s for s in stored if s.version < number]
    if not before:
        return {"of": base, "number": number, "previous": None, "changed": None}
    previous = max(before, key=lambda s: s.version)
    changed = describe_change(dict(previous.provenance), dict(provenance))
    return {"of": base, "number": number, "previous": previous.name, "changed": changed}


def reusable_rois(runs: list[dict[str, Any]]) -> tuple[RoiJson, ...]:
    """The ROIs of an output's runs that no later run of it wrote into again."""
    found = []
    for i, run in enumerate(runs):
        roi = run.get("roi")
        if roi and not any(_overlap(roi, later.get("roi")) for later in runs[i + 1 :]):
            found.append(roi)
    return tuple(found)


def _overlap(a: RoiJson, b: RoiJson | None) -> bool:
    if not b or a.get("level") != b.get("level"):
        return True  # unknown or another level: assume it did
    return all(
        max(s0, s1) < min(e0, e1)
        for s0, e0, s1, e1 in zip(a["start"], a["stop"], b["start"], b["stop"], strict=True)
    )


def describe_change(old: dict[str, Any], new: dict[str, Any]) -> str:
    """The first few differences between two provenance records, as `where: old -> new`."""
    diffs: list[str] = []

    def walk(a: Any, b: Any, where: str) -> None:
        if isinstance(a, dict) and isinstance(b, dict):
            for key in sorted(set(a) | set(b), key=str):
                walk(a.get(key), b.get(key), f"{where}.{key}" if where else str(key))
        elif isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
            for i, (x, y) in enumerate(zip(a, b, strict=True)):
                name = x.get("name") if isinstance(x, dict) else None
                walk(x, y, f"{where}[{name or i}]")
        elif a != b:
            diffs.append(f"{where}: {a!r} -> {b!r}")

    walk(old, new, "")
    return (
        "; ".join(diffs[:3]) + (" ..." if len(diffs) > 3 else "") if diffs else "unknown difference"
    )
