"""The op library: pure numpy functions with specs. Imports nothing from the engine."""

from tasks.filters import GAUSSIAN, MEDIAN
from tasks.function import FUNCTION
from tasks.label import LABEL
from tasks.spec import Context, OpSpec, Params, Reduction
from tasks.threshold import THRESHOLD

OPS: dict[str, OpSpec] = {op.name: op for op in (GAUSSIAN, MEDIAN, THRESHOLD, LABEL, FUNCTION)}

__all__ = ["OPS", "Context", "OpSpec", "Params", "Reduction"]
