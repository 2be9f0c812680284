"""ngff-engine: ROI-scoped pipelines over OME-Zarr, compiled to chunk tasks, run on dask.

The public API: build or load a `Pipeline`, `run` it (or `submit` it and get a handle
at once); `make_plan` to inspect what would run without running it.
"""

from engine.errors import ConfigError, EngineError, NgffError, OutputConflict
from engine.execute.submit import RunHandle, submit
from engine.geometry import Roi
from engine.pipeline import ClusterSpec, InputRef, OutputSpec, Pipeline, RoiSpec, Step
from engine.run import RunResult, make_plan, run
from engine.version import __version__

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
