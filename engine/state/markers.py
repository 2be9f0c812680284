"""Per-chunk done markers: one small append-only file per worker call (a batch of chunk
tasks), one record per chunk done, tagged per stage with the plan's layout hash.

A worker records a chunk only after its data is written (and, for stages whose per-chunk
result the driver combines: reductions, local label counts, face pairs, measurements,
training samples, contingency tables, the result is in the record itself). A record is
one `os.write` to a file opened for appending, so completion is still recorded chunk by
chunk, while files are made, read and removed per batch: O(batches), not O(chunks).
After a SIGKILL a record is there whole, or it is the torn last record of its file (a
write cut short), which is ignored: that chunk is simply done again.

On S3 there is no append: a batch's marker object is written whole (one PUT) after each
chunk, holding every record of the batch so far. A PUT replaces an object atomically, so
after a kill the object holds the records up to the last chunk whose PUT completed:
the guarantee (at most the chunks in flight are redone) is the same; the cost is
O(records in the batch) bytes per chunk, small next to the chunk's own data.

Layout: `_engine/runs/<run_id>/markers/<stage>/` (a `/` in a stage name becomes `.`):

    layout.json    {"layout_hash", "stage", "kind", "tasks", "grid"}: written by the
                   driver when the stage starts; a plan of another layout (a changed
                   config, chunking or ROI) is refused, never mixed with these records
    <uuid>.done    one per worker call; records `<position> <n>\\n` followed by n bytes
                   (the pickled result; n = 0 where the driver keeps no result), with
                   `position` the task's place in the stage's grid, in C order
"""

from __future__ import annotations

import json
import os
import pickle
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from engine.core.errors import EngineError
from engine.core.layout import marker_folder
from engine.io.location import Location, Where, locate
from engine.plan.kinds import KINDS
from engine.plan.types import Plan, Stage

LAYOUT_FILE = "layout.json"
RECORDS = ".done"


class LayoutChanged(EngineError):
    """Markers on disk were made by a plan with another layout or step config."""


@dataclass(frozen=True)
class Done:
    """The chunks of a stage recorded done: positions in its grid, and their results."""

    positions: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    results: dict[int, Any] = field(default_factory=dict)


def marker_path(plan: Plan, stage: Stage) -> str:
    return marker_folder(plan.scratch, stage.name)


def read_records(folder: Path | Location, keep: bool = False) -> Done:
    """Every whole record in a stage's marker folder (a torn last record is left out)."""
    results: dict[int, Any] = {}
    where = Location.parse(folder)
    if where.is_local:
        if where.local_path.is_dir():
            for entry in os.scandir(where.local_path):
                if entry.name.endswith(RECORDS):
                    _parse(Path(entry.path).read_bytes(), results, keep)
    else:
        for name in where.list():
            if name.endswith(RECORDS):
                _parse(where.read_bytes(name), results, keep)
    return Done(np.array(sorted(results), dtype=np.int64), results)


def _parse(data: bytes, into: dict[int, Any], keep: bool) -> None:
    offset = 0
    while True:
        end = data.find(b"\n", offset)
        if end < 0:
            return
        position, size = (int(v) for v in data[offset:end].split())
        payload = data[end + 1 : end + 1 + size]
        if len(payload) < size:
            return
        into[position] = pickle.loads(payload) if keep and size else None
        offset = end + 1 + size


class Markers:
    """Driver side: starts a stage's marker folder, or checks it against the plan, and
    reads which chunks are done with their results."""

    def __init__(self, root: Where, plan: Plan, layout: str) -> None:
        self.root = locate(root)
        self.plan = plan
        self.layout = layout

    def folder(self, stage: Stage) -> Path:
        return self.root.local_path / marker_path(self.plan, stage)

    def prepare(self, stage: Stage) -> Done:
        """Create the stage's marker folder, or check the existing one; the chunks done."""
        if not self.root.is_local:
            return self._prepare_remote(stage)
        folder = self.folder(stage)
        about = self._about(stage)
        try:
            old = json.loads((folder / LAYOUT_FILE).read_text())
        except FileNotFoundError:
            folder.mkdir(parents=True, exist_ok=True)
            tmp = folder / f".{LAYOUT_FILE}.{os.getpid()}"
            tmp.write_text(json.dumps(about))
            os.replace(tmp, folder / LAYOUT_FILE)
            return Done()  # workers record chunks of a stage only after this
        self._check(stage, old, about)
        return self.done(stage)

    def _about(self, stage: Stage) -> dict[str, Any]:
        return {
            "layout_hash": self.layout,
            "stage": stage.name,
            "kind": stage.kind,
            "tasks": len(stage.tasks),
            "grid": list(stage.tasks.shape),
        }

    def _prepare_remote(self, stage: Stage) -> Done:
        """`prepare` in an object store: the layout object is written whole."""
        key = f"{marker_path(self.plan, stage)}/{LAYOUT_FILE}"
        about = self._about(stage)
        try:
            old = json.loads(self.root.read_bytes(key))
        except FileNotFoundError:
            self.root.write_bytes(key, json.dumps(about).encode())
            return Done()
        self._check(stage, old, about)
        return self.done(stage)

    def _check(self, stage: Stage, old: dict[str, Any], about: dict[str, Any]) -> None:
        if old.get("layout_hash") != self.layout or old.get("grid") != about["grid"]:
            raise LayoutChanged(
                f"stage {stage.name}: the done markers in {marker_path(self.plan, stage)} "
                f"were made for another plan layout (hash {old.get('layout_hash')}, grid "
                f"{old.get('grid')}; now {self.layout}, grid {about['grid']}): chunking, ROI "
                "or step config changed"
            )

    def done(self, stage: Stage) -> Done:
        folder = self.root.child(marker_path(self.plan, stage))
        return read_records(folder, KINDS[stage.kind].keeps_results)

    def worker_info(self, stage: Stage) -> dict[str, Any]:
        return {"path": marker_path(self.plan, stage), "keep": KINDS[stage.kind].keeps_results}


class ChunkMarker:
    """Worker side, one per batch: appends a record per chunk done to the batch's own file
    (created at the first record; named uniquely, so a batch run again after its worker
    died never writes into the file of its first attempt)."""

    def __init__(self, root: Where, info: dict[str, Any]) -> None:
        self.where = locate(root, info["path"])
        self.name = f"{uuid.uuid4().hex}{RECORDS}"
        self.path = Path(self.where.url) / self.name
        self.keep = info["keep"]
        self.fd: int | None = None
        self.written = b""  # remote: every record so far, written whole after each chunk

    def mark(self, position: int, result: Any) -> None:
        payload = pickle.dumps(result, protocol=pickle.HIGHEST_PROTOCOL) if self.keep else b""
        if not self.where.is_local:
            self.written += b"%d %d\n" % (position, len(payload)) + payload
            self.where.write_bytes(self.name, self.written)
            return
        if self.fd is None:
            self.fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND)
        record = memoryview(b"%d %d\n" % (position, len(payload)) + payload)
        while record:  # one write, unless the payload is too large for one
            record = record[os.write(self.fd, record) :]

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def drop_torn_writes(root: Where, paths: Sequence[str]) -> int:
    """Remove what a killed run's interrupted writes left: zarr writes a chunk to
    `<key>.<uuid>.partial` and renames it into place, so a SIGKILL in between leaves that
    file (never a torn chunk). Called under the outputs' locks before a resume. An object
    store leaves nothing: a PUT that did not complete stores nothing."""
    where = locate(root)
    if not where.is_local:
        return 0
    removed = 0
    for path in paths:
        for torn in (where.local_path / path).rglob("*.partial"):
            torn.unlink(missing_ok=True)
            removed += 1
    return removed
