"""Per-chunk done markers, as daisy keeps them: one small uint8 zarr array per stage of a
run, one byte per chunk of the stage's grid (a zarr chunk of its own, so workers marking
neighbouring chunks never write the same file), tagged with the plan's layout hash.

A worker marks a chunk only after its data is written (and, for stages whose per-chunk
result the driver combines: reductions, local label counts, face pairs, measurements,
training samples, contingency tables, after that result is saved beside the marker).
Zarr's local store writes each file atomically (temporary file, then rename), so after
a SIGKILL a marker is either there, with its data and result complete, or absent and the
chunk is simply done again.

Layout: `_engine/runs/<run_id>/markers/<stage>` (a `/` in a stage name becomes `.`);
saved results: `<that array's folder>/_results/<i.j.k>.pkl`, inside the array's folder so
zarr never sees them as nodes of the hierarchy.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from engine.errors import EngineError
from engine.plan import Plan, Stage

# Stage kinds whose per-chunk results the driver needs after the stage (kept on disk).
KEEP_RESULTS = frozenset(
    {"reduce", "label", "faces", "segment", "match", "measure", "evaluate", "train"}
)
RESULTS_DIR = "_results"


class LayoutChanged(EngineError):
    """Markers on disk were made by a plan with another layout or step config."""


def marker_path(plan: Plan, stage: Stage) -> str:
    return f"{plan.scratch}/markers/{stage.name.replace('/', '.')}"


def result_file(root: str, path: str, index: Sequence[int]) -> Path:
    return Path(root) / path / RESULTS_DIR / (".".join(str(int(i)) for i in index) + ".pkl")


def grid_shape(stage: Stage) -> tuple[int, ...]:
    ndim = len(stage.tasks[0].index)
    return tuple(max(int(t.index[a]) for t in stage.tasks) + 1 for a in range(ndim))


class Markers:
    """Driver side: creates a stage's marker array, reads which chunks are done, loads
    the results saved with them."""

    def __init__(self, root: str, plan: Plan, layout: str) -> None:
        self.root = root
        self.plan = plan
        self.layout = layout
        self.group = zarr.open_group(root, mode="r+")

    def prepare(self, stage: Stage) -> set[tuple[int, ...]]:
        """Create the stage's marker array, or check the existing one; the chunks done."""
        path = marker_path(self.plan, stage)
        shape = grid_shape(stage)
        attrs = {"layout_hash": self.layout, "stage": stage.name, "kind": stage.kind}
        try:
            array = zarr.open_array(f"{self.root}/{path}", mode="r")
        except (FileNotFoundError, KeyError, zarr.errors.BaseZarrError):
            array = None
        if array is None:
            created = self.group.create_array(
                path,
                shape=shape,
                chunks=(1,) * len(shape),
                dtype="uint8",
                fill_value=0,
                compressors=None,
                overwrite=True,
            )
            created.attrs.update(attrs)
            return set()
        old = dict(array.attrs.asdict())
        if old.get("layout_hash") != self.layout or tuple(array.shape) != shape:
            raise LayoutChanged(
                f"stage {stage.name}: the done markers in {path} were made for another plan "
                f"layout (hash {old.get('layout_hash')}, grid {tuple(array.shape)}; now "
                f"{self.layout}, grid {shape}): chunking, ROI or step config changed"
            )
        return self.done(stage, array)

    def done(self, stage: Stage, array: zarr.Array | None = None) -> set[tuple[int, ...]]:
        path = marker_path(self.plan, stage)
        if array is None:
            try:
                array = zarr.open_array(f"{self.root}/{path}", mode="r")
            except (FileNotFoundError, KeyError, zarr.errors.BaseZarrError):
                return set()
        flags = np.asarray(array[...])
        return {tuple(int(i) for i in idx) for idx in np.argwhere(flags > 0)}

    def load_result(self, stage: Stage, index: Sequence[int]) -> Any:
        if stage.kind not in KEEP_RESULTS:
            return None
        with result_file(self.root, marker_path(self.plan, stage), index).open("rb") as f:
            return pickle.load(f)

    def worker_info(self, stage: Stage) -> dict[str, Any]:
        return {"path": marker_path(self.plan, stage), "keep": stage.kind in KEEP_RESULTS}


class ChunkMarker:
    """Worker side, one per batch: saves a chunk's result (when kept), then marks it."""

    def __init__(self, root: str, info: dict[str, Any]) -> None:
        self.root = root
        self.path = info["path"]
        self.keep = info["keep"]
        array = zarr.open_array(f"{root}/{self.path}", mode="r+")
        self.metadata = array.metadata
        self.raw = not (array.compressors or array.filters)  # a chunk is its one byte

    def mark(self, index: Sequence[int], result: Any) -> None:
        if self.keep:
            _write_atomic(
                result_file(self.root, self.path, index),
                pickle.dumps(result, protocol=pickle.HIGHEST_PROTOCOL),
            )
        # The marker array is uncompressed uint8 with one element per zarr chunk, so a
        # chunk's encoded form is that one byte: written directly, it costs a file write
        # instead of a trip through zarr's async machinery (about 1 ms a chunk).
        if not self.raw:  # let zarr encode it
            array = zarr.open_array(f"{self.root}/{self.path}", mode="r+")
            array[tuple(slice(int(i), int(i) + 1) for i in index)] = 1
            return
        key = self.metadata.encode_chunk_key(tuple(int(i) for i in index))
        _write_atomic(Path(self.root) / self.path / key, b"\x01")


def _write_atomic(target: Path, data: bytes) -> None:
    tmp = target.with_name(f".{target.name}.{os.getpid()}")
    try:
        tmp.write_bytes(data)
    except FileNotFoundError:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_bytes(data)
    os.replace(tmp, target)


def drop_torn_writes(root: str, paths: Sequence[str]) -> int:
    """Remove what a killed run's interrupted writes left: zarr writes a chunk to
    `<key>.<uuid>.partial` and renames it into place, so a SIGKILL in between leaves that
    file (never a torn chunk). Called under the outputs' locks before a resume."""
    removed = 0
    for path in paths:
        for torn in (Path(root) / path).rglob("*.partial"):
            torn.unlink(missing_ok=True)
            removed += 1
    return removed
