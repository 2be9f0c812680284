"""What a run gives back: outputs, objects, scores, timings and memory; and its JSON
form, which a batch job writes and `RunHandle.wait()` reads back."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from engine.core.geometry import Roi
from engine.execute.executor import StageStats
from tasks.evaluate import Scores


@dataclass(frozen=True)
class RunResult:
    run_id: str
    image: str
    roi: Roi
    outputs: dict[str, str]
    stages: list[StageStats]
    seconds: float
    labels: dict[str, int] = field(default_factory=dict)
    merge: dict[str, dict[str, float]] = field(default_factory=dict)  # per global step
    peak_worker_bytes: dict[str, int] = field(default_factory=dict)  # per worker address
    projected_worker_bytes: int = 0  # engine/plan/memory.py, checked before the run
    reused: list[str] = field(default_factory=list)  # outputs read as they were, not computed
    evaluations: dict[str, Scores] = field(default_factory=dict)  # by table, on this ROI
    previews: dict[str, str] = field(default_factory=dict)  # by table: its PNG (preview: true)
    # by label output, after an update: objects in the whole output (this ROI's and the
    # earlier runs' left outside it); `labels` counts this ROI's
    objects_in_output: dict[str, int] = field(default_factory=dict)
    # by evaluation table of a new version: (the previous version's name, its scores on
    # this ROI), to print next to the new ones
    previous_evaluations: dict[str, tuple[str, Scores]] = field(default_factory=dict)

    @property
    def tasks_done(self) -> int:
        """Chunk tasks this run computed (0 when every output was reused)."""
        return sum(s.done for s in self.stages)

    def to_json(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "image": self.image,
            "roi": self.roi.to_json(),
            "outputs": self.outputs,
            "objects": self.labels,
            "objects_in_output": self.objects_in_output,
            "previous_evaluations": {
                name: {"version": prev, **s.to_json()}
                for name, (prev, s) in self.previous_evaluations.items()
            },
            "reused": self.reused,
            "evaluations": {name: s.to_json() for name, s in self.evaluations.items()},
            "previews": self.previews,
            "tasks_done": self.tasks_done,
            "seconds": round(self.seconds, 3),
            "stages": [
                {
                    "name": s.name,
                    "kind": s.kind,
                    "tasks": s.tasks,
                    "done": s.done,
                    "seconds": round(s.seconds, 3),
                    "cpu": s.cpu,
                }
                for s in self.stages
            ],
            "merge": self.merge,
            "peak_worker_bytes": self.peak_worker_bytes,
            "projected_worker_bytes": self.projected_worker_bytes,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RunResult:
        """The result a batch job wrote (result.json), as `to_json` made it."""
        return cls(
            run_id=data["run_id"],
            image=data["image"],
            roi=Roi.from_json(data["roi"]),
            outputs=data["outputs"],
            stages=[
                StageStats(
                    s["name"],
                    s["kind"],
                    s["tasks"],
                    s["seconds"],
                    s.get("done", 0),
                    cpu=s.get("cpu", {}),
                )
                for s in data["stages"]
            ],
            seconds=data["seconds"],
            labels=data.get("objects", {}),
            objects_in_output=data.get("objects_in_output", {}),
            reused=data.get("reused", []),
            evaluations={k: Scores.from_json(v) for k, v in data.get("evaluations", {}).items()},
        )
