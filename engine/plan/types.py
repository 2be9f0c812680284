"""The plan: plain, frozen data, built without touching pixel data.

Per stage: which chunk tasks run (a `ChunkGrid`, a rule, not a list), the source its
chain reads, the links of that chain, what it writes and which stages it waits for.
The compiler (engine/plan/compiler.py) makes it; the executor and the workers read it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from engine.core.geometry import Roi
from engine.core.grid import ChunkGrid
from engine.io.metadata import Axis
from engine.io.ngff_write import LevelSpec, OutputKind, output_path
from tasks import Context


@dataclass(frozen=True)
class Source:
    """Where a chain starts: an image level (one channel) or an array the run wrote."""

    path: str
    dtype: str
    bounds: Roi
    channel_axis: int | None = None
    channel: int | None = None
    cache_key: str | None = None  # set for the input image: reads may share decoded chunks


@dataclass(frozen=True)
class Link:
    """One step of a fused chain."""

    step: str
    op: str
    params: dict[str, Any]
    halo: tuple[int, ...]
    dtype: str
    value_from: str | None = None


@dataclass(frozen=True)
class OutputPlan:
    step: str
    kind: OutputKind | Literal["table", "model"]
    name: str
    dtype: str | None
    axes: tuple[Axis, ...]
    levels: tuple[LevelSpec, ...]
    provenance: dict[str, Any]
    config_hash: str
    version: Mapping[str, Any] | None = None  # with `versions: keep`: number, previous, change
    op: str = ""

    @property
    def path(self) -> str:
        return output_path(self.kind, self.name)


@dataclass(frozen=True)
class Stage:
    name: str
    step: str
    kind: str  # an entry of engine/plan/kinds.py
    source: Source | None
    chain: tuple[Link, ...]
    tasks: ChunkGrid
    after: tuple[str, ...] = ()
    target: str | None = None
    target_dtype: str | None = None
    pass_no: int = 0
    level: int = 0
    connectivity: int = 1
    labels: Source | None = None  # measure, evaluate: the label image, read per chunk
    grid: tuple[int, ...] = ()  # chunk shape of the tasks' grid, when not the plan's
    shards: tuple[int, ...] = ()  # shard shape of the target: its tasks go per shard
    region: Roi | None = None  # segment: the ROI, where a chunk's overlap stops as objects do
    resources: tuple[tuple[str, float], ...] = ()  # dask worker resources each task needs
    batch_size: int | None = None  # chunk tasks per worker call; None: the executor's choice


@dataclass(frozen=True)
class Plan:
    image: str
    level: int
    roi: Roi
    axes: tuple[str, ...]
    spatial: tuple[int, ...]
    chunks: tuple[int, ...]
    context: Context
    stages: tuple[Stage, ...]
    outputs: tuple[OutputPlan, ...]
    scratch: str
    reused: tuple[OutputPlan, ...] = ()  # outputs read as they are, not written
    extra: dict[str, Any] = field(default_factory=dict)

    def stage(self, name: str) -> Stage:
        for stage in self.stages:
            if stage.name == name:
                return stage
        raise KeyError(name)

    @property
    def task_count(self) -> int:
        return sum(len(s.tasks) for s in self.stages)
