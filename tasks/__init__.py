"""The op library: pure numpy functions with specs. Imports nothing from the engine.

Ops call scipy and scikit-image as `scipy.ndimage.gaussian_filter(...)`,
`skimage.filters.threshold_otsu(...)`: both packages load such submodules on first use.
The command imports every op for its spec (planning), and `from scipy import ndimage`
there cost it about 0.4 s of its start; whoever runs ops loads them ahead through
tasks/backends.py."""

from tasks.classifier import PREDICT, TRAIN
from tasks.evaluate import EVALUATE
from tasks.filters import GAUSSIAN, MEDIAN
from tasks.function import FUNCTION
from tasks.instance import INSTANCE
from tasks.label import LABEL
from tasks.measure import MEASURE
from tasks.model import MODEL
from tasks.spec import Context, OpSpec, Params, Reduction
from tasks.threshold import NORMALIZE, THRESHOLD

OPS: dict[str, OpSpec] = {
    op.name: op
    for op in (
        GAUSSIAN,
        MEDIAN,
        THRESHOLD,
        NORMALIZE,
        LABEL,
        INSTANCE,
        FUNCTION,
        MEASURE,
        EVALUATE,
        MODEL,
        TRAIN,
        PREDICT,
    )
}

__all__ = ["OPS", "Context", "OpSpec", "Params", "Reduction"]
