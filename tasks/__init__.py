"""The op library: pure numpy functions with specs. Imports nothing from the engine.

Ops call scipy and scikit-image as `scipy.ndimage.median_filter(...)`,
`skimage.filters.sobel(...)`: both packages load such submodules on first use.
The command imports every op for its spec (planning), and `from scipy import ndimage`
there cost it about 0.4 s of its start; whoever runs ops loads them ahead through
tasks/backends.py.

`OPS` imports an op's module when the op is first asked for: the pixel classifier's
(its pydantic models, features and model ops) took 0.02 s of every command's start,
and a pipeline that names none of them never needs it.
"""

import importlib
from collections.abc import Iterator, Mapping

from tasks.spec import Context, OpSpec, Params, Reduction

# op name -> (module, attribute), in the order ops are listed
_WHERE = {
    "gaussian": ("tasks.filters", "GAUSSIAN"),
    "median": ("tasks.filters", "MEDIAN"),
    "threshold": ("tasks.threshold", "THRESHOLD"),
    "normalize": ("tasks.threshold", "NORMALIZE"),
    "label": ("tasks.label", "LABEL"),
    "instance": ("tasks.instance", "INSTANCE"),
    "function": ("tasks.function", "FUNCTION"),
    "measure": ("tasks.measure", "MEASURE"),
    "evaluate": ("tasks.evaluate", "EVALUATE"),
    "model": ("tasks.model", "MODEL"),
    "train_pixel_classifier": ("tasks.classifier", "TRAIN"),
    "predict_pixel_classifier": ("tasks.classifier", "PREDICT"),
}


class Ops(Mapping[str, OpSpec]):
    """The ops by name, each module imported on first use."""

    def __getitem__(self, name: str) -> OpSpec:
        module, attribute = _WHERE[name]
        return getattr(importlib.import_module(module), attribute)

    def __iter__(self) -> Iterator[str]:
        return iter(_WHERE)

    def __len__(self) -> int:
        return len(_WHERE)


OPS = Ops()

__all__ = ["OPS", "Context", "OpSpec", "Params", "Reduction"]
