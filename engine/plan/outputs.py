"""Compile rules for what a step writes: provenance and config hash, the decision to
reuse, version or write an output (engine/plan/versions.py), the output's levels and
shards, and its pyramid stages.

A mixin of the compiler (engine/plan/compiler.py).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from engine.core.errors import ConfigError
from engine.core.geometry import Roi
from engine.core.grid import ChunkGrid
from engine.core.hashing import config_hash
from engine.core.pipeline import Step
from engine.io.downsample import downsample_factors
from engine.io.models import model_version
from engine.io.ngff_write import LevelSpec
from engine.plan.types import OutputPlan, Source, Stage
from engine.plan.versions import Decision, decide
from tasks import OPS


class OutputRules:
    def _decide(
        self, step: Step, extra: dict[str, Any] | None = None
    ) -> tuple[Decision, dict[str, Any], str]:
        """Provenance, config hash and what happens to a step's output (once per step)."""
        if step.name in self.decisions:
            return self.decisions[step.name]
        target = step.writes()
        assert target is not None
        upstream = self.pipeline.upstream(step.name)
        models = {
            s.name: model_version(self.expanded[s.name])
            for s in upstream
            if s.name in self.expanded
        }
        provenance = {
            "step": step.name,
            "chain": [s.config() for s in upstream],
            "input": str(self.meta.path),
            "level": self.level,
            "ops": {s.op: OPS[s.op].version for s in upstream},
            **({"models": models} if models else {}),
            **(extra or {}),
        }
        # the path the image was opened by (relative, absolute, after a move) is not part
        # of what was computed: the output lives inside that image whichever path it is
        digest = config_hash({k: v for k, v in provenance.items() if k != "input"})
        stored = self.existing.outputs.get(target, ())
        keep = step.output is not None and step.output.versions == "keep"  # models: none
        decision = decide(
            target[1], keep, digest, provenance, self.roi.to_json(), stored, self.overwrite
        )
        self.decisions[step.name] = (decision, provenance, digest)
        return self.decisions[step.name]

    def _reused(self, step: Step, extra: dict[str, Any] | None = None) -> bool:
        """True when the step's output is stored already for this config and ROI: it is
        then read where chains need it, and none of its stages are planned."""
        decision, _, _ = self._decide(step, extra)
        if decision.reuse is None:
            return False
        out = self._output_plan(step, decision.reuse.dtype)
        self.reused.append(out)
        if out.kind not in ("table", "model"):
            # as the result of a run: labels as a whole; a blockwise result is exact only
            # inside the ROI, so a chain needing a halo around it computes it again
            source = Source(f"{out.path}/{out.levels[0].path}", out.dtype or "uint32", self.roi)
            self.materialised[step.name] = (source, None, self._kind(step) != "global")
        return True

    def _output(
        self, step: Step, dtype: str | None, extra: dict[str, Any] | None = None
    ) -> OutputPlan:
        """The output a step writes: its `output:`, or the model artifact it trains."""
        self._decide(step, extra)
        label = step.output is not None and step.output.kind == "label"
        if dtype is not None:
            np_dtype = np.dtype(dtype)
            if np_dtype == np.bool_:
                dtype = "uint8"
            elif label and not np.issubdtype(np_dtype, np.integer):
                raise ConfigError(
                    f"step '{step.name}': output kind 'label' needs integer data, "
                    f"but this step makes {np_dtype}"
                )
        out = self._output_plan(step, dtype)
        self.outputs.append(out)
        return out

    def _output_plan(self, step: Step, dtype: str | None) -> OutputPlan:
        decision, provenance, digest = self.decisions[step.name]
        target = step.writes()
        assert target is not None
        kind = target[0]
        return OutputPlan(
            step=step.name,
            kind=kind,
            name=decision.name,
            dtype=dtype,
            axes=self.axes,
            levels=() if kind == "model" else self._output_levels(step),
            provenance=provenance,
            config_hash=digest,
            version=decision.version,
            op=step.op,
        )

    def _output_levels(self, step: Step) -> tuple[LevelSpec, ...]:
        work = self.meta.drop_channel
        shards = self._shards(step)
        levels = []
        for k, lv in enumerate(self.meta.levels[self.level :]):
            chunks = work(lv.chunks)
            if shards is not None and any(s % c for s, c in zip(shards, chunks, strict=True)):
                raise ConfigError(
                    f"step '{step.name}': output.shards {list(shards)} must be a multiple of "
                    f"the chunks {list(chunks)} (level s{k})"
                )
            levels.append(
                LevelSpec(
                    path=f"s{k}",
                    shape=work(lv.shape),
                    chunks=chunks,
                    scale=work(lv.scale),
                    translation=work(lv.translation),
                    shards=shards,
                )
            )
        return tuple(levels)

    def _shards(self, step: Step) -> tuple[int, ...] | None:
        shards = step.output.shards if step.output is not None else None
        if shards is None:
            return None
        if step.output is not None and step.output.kind == "table":
            raise ConfigError(f"step '{step.name}': output.shards applies to images and labels")
        if self.meta.version != "0.5":
            raise ConfigError(
                f"step '{step.name}': output.shards needs zarr v3 (NGFF 0.5); "
                f"{self.meta.path} is NGFF {self.meta.version}"
            )
        if len(shards) != len(self.axes):
            raise ConfigError(
                f"step '{step.name}': output.shards has {len(shards)} values; the output has "
                f"{len(self.axes)} axes ({', '.join(self.axis_names)})"
            )
        return tuple(int(s) for s in shards)

    def _pyramid(self, step: Step, out: OutputPlan, after: str) -> None:
        region = self.roi
        previous = after
        for k in range(1, len(out.levels)):
            lower, upper = out.levels[k - 1], out.levels[k]
            factors = downsample_factors(lower, upper)
            region = Roi(
                tuple(a // f for a, f in zip(region.start, factors, strict=True)),
                tuple(
                    min(-(-b // f), s)
                    for b, f, s in zip(region.stop, factors, upper.shape, strict=True)
                ),
                self.level + k,
            )
            bounds = Roi.from_shape(upper.shape, self.level + k)
            lower_bounds = Roi.from_shape(lower.shape, self.level + k - 1)
            tasks = ChunkGrid(upper.chunks, bounds, region, lower_bounds, factors=factors)
            name = f"{step.name}/pyramid-{k}"
            self.stages[name] = Stage(
                name,
                step.name,
                "pyramid",
                Source(f"{out.path}/{lower.path}", out.dtype or "uint64", lower_bounds),
                (),
                tasks,
                (previous,),
                f"{out.path}/{upper.path}",
                out.dtype,
                level=k,
                connectivity=0 if out.kind == "label" else 1,
                grid=upper.chunks,
                shards=upper.shards or (),
            )
            previous = name
