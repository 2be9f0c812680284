"""ngff-engine: ROI-scoped pipelines over OME-Zarr, compiled to chunk tasks, run on dask.

The public API: build or load a `Pipeline`, `run` it (or `submit` it and get a handle
at once); `make_plan` to inspect what would run without running it.

Names are imported on first use (PEP 562), so `import engine` costs nothing: the
command line (engine/launch.py) starts its workers' process server before the
engine's own imports, which take over a second, and both then import side by side.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_WHERE = {
    "ClusterSpec": "engine.pipeline",
    "ConfigError": "engine.errors",
    "EngineError": "engine.errors",
    "InputRef": "engine.pipeline",
    "NgffError": "engine.errors",
    "OutputConflict": "engine.errors",
    "OutputSpec": "engine.pipeline",
    "Pipeline": "engine.pipeline",
    "Roi": "engine.geometry",
    "RoiSpec": "engine.pipeline",
    "RunHandle": "engine.execute.submit",
    "RunResult": "engine.runner",
    "Step": "engine.pipeline",
    "__version__": "engine.version",
    "make_plan": "engine.runner",
    "run": "engine.runner",
    "submit": "engine.execute.submit",
}
__all__ = [
    "ClusterSpec",
    "ConfigError",
    "EngineError",
    "InputRef",
    "NgffError",
    "OutputConflict",
    "OutputSpec",
    "Pipeline",
    "Roi",
    "RoiSpec",
    "RunHandle",
    "RunResult",
    "Step",
    "__version__",
    "make_plan",
    "run",
    "submit",
]


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'engine' has no attribute {name!r}")
    value = getattr(importlib.import_module(_WHERE[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_WHERE})


if TYPE_CHECKING:
    from engine.errors import ConfigError, EngineError, NgffError, OutputConflict
    from engine.execute.submit import RunHandle, submit
    from engine.geometry import Roi
    from engine.pipeline import ClusterSpec, InputRef, OutputSpec, Pipeline, RoiSpec, Step
    from engine.runner import RunResult, make_plan, run
    from engine.version import __version__
