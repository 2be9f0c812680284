"""One writer per output: a lock file `_engine/locks/<output path>` per output a run writes.

The file holds the run id, host and pid, and the SLURM job id when the run is inside a
job. It is created atomically (written under a temporary name, then hard-linked into
place: the link fails if the lock exists), and removed at the end of the run. A lock whose
pid is gone on this host is stale (its run was killed) and is taken over; so is one from
another host whose SLURM job squeue no longer lists (a batch job that was cancelled or hit
its walltime). Any other lock from another host is never broken. A lock file that is not
JSON (damaged: locks are written whole) is taken over when no run recorded as running on
its output could hold it (`taken_over` says so), and otherwise refused as unreadable.

On S3 (an output store or image in a bucket) a lock is an object created with a
conditional PUT (`If-None-Match: *`): the server refuses it when the key exists, so
taking a lock keeps its guarantee. Breaking a stale lock is weaker there: S3 has no
rename, so the stale object is read, checked and deleted, and two runs breaking the same
stale lock at the same moment could both see it stale; the conditional create that
follows still lets only one of them take it, but the loser may delete the winner's fresh
lock between its check and its delete (a window of one request).
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from engine.core.errors import OutputConflict
from engine.core.layout import LOCKS
from engine.io.location import Location
from engine.state.processes import is_stale, this_process
from engine.state.records import list_runs


def _read(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {}


def _live_run_of(root: Path, output: str) -> str | None:
    """The id of a run recorded as running on `output` whose process may still be alive
    (the only runs that could hold its lock); None: no such run."""
    for record in list_runs(root):
        if record.get("state") == "running" and output in record.get("outputs", []):
            return str(record.get("run_id"))
    return None


class OutputLocks:
    """Locks on every output of a run, taken all or none (in sorted order)."""

    def __new__(cls, root: str | Path | Location, *args: Any, **kwargs: Any) -> OutputLocks:
        if cls is OutputLocks and not Location.parse(root).is_local:
            return super().__new__(RemoteOutputLocks)  # same interface, objects not files
        return super().__new__(cls)

    def __init__(self, root: str | Path | Location, outputs: Iterable[str], run_id: str) -> None:
        self.where = Location.parse(root)
        self.base = self.where.local_path / LOCKS
        self.outputs = sorted(set(outputs))
        self.owner = {"run_id": run_id, **this_process()}
        self.held: list[Path] = []
        self.taken_over: list[dict[str, Any]] = []

    def path(self, output: str) -> Path:
        return self.base / output

    def acquire(self) -> OutputLocks:
        try:
            for output in self.outputs:
                self._acquire(output)
        except BaseException:
            self.release()
            raise
        return self

    def _acquire(self, output: str) -> None:
        path = self.path(output)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}")
        tmp.write_text(json.dumps(self.owner))
        try:
            for _ in range(3):
                try:
                    os.link(tmp, path)
                    self.held.append(path)
                    return
                except FileExistsError:
                    pass
                owner = _read(path)
                if owner is None:
                    continue  # released meanwhile: try again
                if not owner:  # not JSON: locks are written whole, so something damaged it
                    holder = _live_run_of(self.base.parent.parent, output)
                    if holder is None:
                        self._break(path, owner)
                        continue
                    raise OutputConflict(
                        f"lock file {path} is not valid JSON, and run {holder} that writes "
                        f"output {output} is still running; wait for it to finish, or remove "
                        f"{path} if that run is gone"
                    )
                if is_stale(owner):
                    self._break(path, owner)
                    continue
                who = owner.get("run_id", "an unknown run")
                where = f"pid {owner.get('pid')} on {owner.get('host')}" if owner else "?"
                raise OutputConflict(
                    f"output {output} is being written by run {who} ({where}); wait for it to "
                    f"finish, or remove {path} if that run is gone"
                )
            raise OutputConflict(f"output {output}: could not take its lock {path}")
        finally:
            tmp.unlink(missing_ok=True)

    def _break(self, path: Path, owner: dict[str, Any]) -> None:
        """Remove a stale lock, and only that one: move it aside first, check it is
        the lock judged stale, and put back a lock another run took in between."""
        aside = path.with_name(f".{path.name}.stale.{uuid.uuid4().hex}")
        try:
            os.rename(path, aside)
        except FileNotFoundError:
            return
        if _read(aside) != owner:
            try:
                os.link(aside, path)
            except FileExistsError:
                pass
        else:
            self.taken_over.append(owner or {"broken_lock": str(path)})
        aside.unlink(missing_ok=True)

    def release(self) -> None:
        for path in self.held:
            if _read(path) == self.owner:
                path.unlink(missing_ok=True)
            parent = path.parent
            while parent != self.base.parent.parent:  # up to `_engine/`, if empty
                try:
                    parent.rmdir()  # only if empty
                except OSError:
                    break
                parent = parent.parent
        self.held = []


class RemoteOutputLocks(OutputLocks):
    """The same locks as objects in an object store (see the module docstring)."""

    def __init__(self, root: str | Path | Location, outputs: Iterable[str], run_id: str) -> None:
        self.where = Location.parse(root)
        self.outputs = sorted(set(outputs))
        self.owner = {"run_id": run_id, **this_process()}
        self.held: list[Path] = []
        self.held_keys: list[str] = []
        self.taken_over: list[dict[str, Any]] = []

    def path(self, output: str) -> Path:  # for messages: the lock's URL
        return Path(self.where.child(f"{LOCKS}/{output}").url)

    def _read_key(self, key: str) -> dict[str, Any] | None:
        try:
            return json.loads(self.where.read_bytes(key))
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            return {}

    def _acquire(self, output: str) -> None:
        key = f"{LOCKS}/{output}"
        data = json.dumps(self.owner).encode()
        for _ in range(3):
            if self.where.create_bytes(key, data):
                self.held_keys.append(key)
                return
            owner = self._read_key(key)
            if owner is None:
                continue  # released meanwhile: try again
            if owner and is_stale(owner):
                if self._read_key(key) == owner:
                    self.where.delete(key)
                    self.taken_over.append(owner)
                continue
            who = owner.get("run_id", "an unknown run")
            where = f"pid {owner.get('pid')} on {owner.get('host')}" if owner else "?"
            raise OutputConflict(
                f"output {output} is being written by run {who} ({where}); wait for it to "
                f"finish, or remove {self.where.child(key)} if that run is gone"
            )
        raise OutputConflict(f"output {output}: could not take its lock {self.where.child(key)}")

    def release(self) -> None:
        for key in self.held_keys:
            if self._read_key(key) == self.owner:
                self.where.delete(key)
        self.held_keys = []
