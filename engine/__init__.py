"""ngff-engine: ROI-scoped pipelines over OME-Zarr, compiled to chunk tasks, run on dask.

The public API: build or load a `Pipeline`, `run` it; `make_plan` to inspect
what would run without running it.
"""

from engine.errors import ConfigError, EngineError, NgffError, OutputConflict
from engine.geometry import Roi
from engine.pipeline import InputRef, OutputSpec, Pipeline, RoiSpec, Step
from engine.run import RunResult, make_plan, run
from engine.version import __version__

__all__ = [
    "ConfigError",
    "EngineError",
    "InputRef",
    "NgffError",
    "OutputConflict",
    "OutputSpec",
    "Pipeline",
    "Roi",
    "RoiSpec",
    "RunResult",
    "Step",
    "__version__",
    "make_plan",
    "run",
]
