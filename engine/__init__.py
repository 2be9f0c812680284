"""ngff-engine: ROI-scoped pipelines over OME-Zarr, compiled to chunk tasks, run on dask.

The public API: build or load a `Pipeline`, `run` it (or `submit` it and get a handle
at once); `make_plan` to inspect what would run without running it.

Names are imported on first use (PEP 562), so `import engine` costs nothing: the
command line (engine/cli/entry.py) starts its workers' process server before the
engine's own imports, which take over a second, and both then import side by side. The
first `engine.run` or `engine.submit` here does the same for the Python API.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_WHERE = {
    "ClusterSpec": "engine.core.pipeline",
    "ConfigError": "engine.core.errors",
    "EngineError": "engine.core.errors",
    "ImportResult": "engine.runs.importing",
    "InputRef": "engine.core.pipeline",
    "NgffError": "engine.core.errors",
    "OutputConflict": "engine.core.errors",
    "OutputSpec": "engine.core.pipeline",
    "Pipeline": "engine.core.pipeline",
    "Roi": "engine.core.geometry",
    "RoiSpec": "engine.core.pipeline",
    "RunHandle": "engine.runs.submit",
    "RunResult": "engine.runs.result",
    "Step": "engine.core.pipeline",
    "__version__": "engine.core.version",
    "export": "engine.io.export",
    "import_image": "engine.runs.importing",
    "make_plan": "engine.runs.planning",
    "run": "engine.runs.units",
    "submit": "engine.runs.submit",
}
__all__ = [
    "ClusterSpec",
    "ConfigError",
    "EngineError",
    "ImportResult",
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
    "export",
    "import_image",
    "make_plan",
    "run",
    "submit",
]


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'engine' has no attribute {name!r}")
    if name in ("run", "submit"):
        # the local workers' fork server imports their modules while this process
        # imports the engine (engine/core/worker_env.py)
        from engine.core.worker_env import ensure_worker_server

        ensure_worker_server()
    value = getattr(importlib.import_module(_WHERE[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_WHERE})


if TYPE_CHECKING:
    from engine.core.errors import ConfigError, EngineError, NgffError, OutputConflict
    from engine.core.geometry import Roi
    from engine.core.pipeline import ClusterSpec, InputRef, OutputSpec, Pipeline, RoiSpec, Step
    from engine.core.version import __version__
    from engine.io.export import export
    from engine.runs.importing import ImportResult, import_image
    from engine.runs.planning import make_plan
    from engine.runs.result import RunResult
    from engine.runs.submit import RunHandle, submit
    from engine.runs.units import run
