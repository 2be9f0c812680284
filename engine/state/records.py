"""Run records: the attributes of `_engine/runs/<run_id>` in the image's zarr (or its
output store). A record is one zarr metadata document, written whole each time (one PUT
on S3), so a kill never leaves half a record.

Written by the driver when a run starts, after each stage and at the end (also when it
fails, with the error). A run that was killed keeps `state: running` with the pid of a
process that no longer exists; `status` shows it as `killed`. The record outlives the
run's scratch (arrays and markers inside the same group), which is removed on success.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

from engine.core.errors import EngineError, NoSpace, disk_full
from engine.core.layout import RUNS
from engine.io.group_attrs import read_group_attr, write_group_attr
from engine.io.location import Location
from engine.state.processes import is_stale

KEY = "ngff_engine_run"


def now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds")


class RunRecord:
    def __init__(self, root: str | Location, run_id: str, data: dict[str, Any]) -> None:
        self.root = Location.parse(root)
        self.run_id = run_id
        self.data = data

    @property
    def path(self) -> str:
        return f"{RUNS}/{self.run_id}"

    def save(self) -> None:
        """One atomic metadata write: a kill never leaves a run group without its record."""
        try:
            write_group_attr(self.root, self.path, KEY, self.data)
        except OSError as exc:
            if disk_full(exc, f"{self.root}/{self.path}/"):
                raise NoSpace(f"{self.root}/{self.path}") from None
            raise

    def update(self, **values: Any) -> None:
        self.data.update(values)
        self.save()


def read_record(root: str | Location, run_id: str) -> dict[str, Any] | None:
    data = read_group_attr(root, f"{RUNS}/{run_id}", KEY)
    return dict(data) if isinstance(data, dict) else None


def list_runs(root: str | Path | Location) -> list[dict[str, Any]]:
    """Every run record of an image (or output store), oldest first; `state` says
    `killed` for a run still marked running whose process is gone."""
    where = Location.parse(root)
    records = []
    for name in where.list_dirs(RUNS):
        data = read_record(where, name)
        if data is None:
            continue
        if data.get("state") == "running" and is_stale(data.get("process", {})):
            data["state"] = "killed"
        records.append(data)
    # run ids are made per second: runs started within one second are ordered by `started`
    records.sort(
        key=lambda r: (
            str(r.get("run_id", ""))[:15],
            str(r.get("started", "")),
            str(r.get("run_id", "")),
        )
    )
    return records


def interrupted_run(root: str | Location, output: str) -> dict[str, Any] | None:
    """The latest run that wrote `output` if it was killed (interrupted, not failed on
    its own: its error is for the user to fix first); None otherwise."""
    runs = [r for r in list_runs(root) if output in r.get("outputs", [])]
    if runs and runs[-1].get("state") == "killed":
        return runs[-1]
    return None


def find_resumable(root: str | Location, outputs: list[str]) -> dict[str, Any]:
    """The latest unfinished run (killed or failed) that wrote any of these outputs."""
    candidates = [
        r
        for r in list_runs(root)
        if r.get("state") in ("killed", "failed") and set(r.get("outputs", [])) & set(outputs)
    ]
    if not candidates:
        live = [r for r in list_runs(root) if r.get("state") == "running"]
        more = f" (run {live[-1]['run_id']} is still running)" if live else ""
        raise EngineError(
            f"--resume: no interrupted or failed run of outputs {', '.join(outputs)} "
            f"in {Location.parse(root).child(RUNS)}{more}; run without --resume"
        )
    return candidates[-1]
