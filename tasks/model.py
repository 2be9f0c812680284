"""Any model as an op: `op: model` with a factory `module:factory` that builds a callable.

Models are expensive to load (weights from disk, a GPU context), so the factory is
called once per worker process for each (factory, kwargs) and the callable it returns
is cached here; every chunk the process runs then reuses it. The callable gets one
block (the chunk plus the declared halo, clipped at the image border) and returns an
array of the block's shape, in the declared dtype. A callable with a keyword argument
`keep` is instead given the part of the block the engine keeps (slices of the block,
the op's `apply_cropped`) and returns just that part: the pixel classifier does, to run
its forest on the chunk's voxels only.

`batch_size` is how many chunks one worker call (one dask task) runs, one after the
other through the cached callable; `resources` are the dask worker resources each such
call needs (e.g. `{gpu: 1}`), given to SLURM worker jobs as `--gres`.
"""

from __future__ import annotations

import inspect
import json
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from pydantic import Field, field_validator

from tasks.function import (
    ImportPath,
    UserCallableParams,
    checked_result,
    declared_dtype,
    declared_halo,
    load_function,
)
from tasks.spec import Context, OpSpec, Params


class Placement(Params):
    """Where and how chunks of a model step run: `batch_size` chunks per worker call (by
    default the engine's grouping), on workers that offer `resources` (dask worker
    resources, e.g. {gpu: 1})."""

    batch_size: int | None = Field(default=None, ge=1)
    resources: dict[str, float] = Field(default_factory=dict)

    @field_validator("resources")
    @classmethod
    def _positive(cls, resources: dict[str, float]) -> dict[str, float]:
        bad = [name for name, amount in resources.items() if amount <= 0]
        if bad:
            raise ValueError(f"resource '{bad[0]}' needs a positive amount")
        return resources


class ModelParams(Placement, UserCallableParams):
    model: ImportPath


@dataclass(frozen=True)
class LoadedModel:
    """A factory's callable, and whether it takes `keep`."""

    predict: Callable[..., Any]
    takes_keep: bool


_MODELS: dict[str, LoadedModel] = {}
_LOCK = threading.Lock()


def model_key(factory: str, kwargs: dict[str, Any]) -> str:
    return factory + json.dumps(kwargs, sort_keys=True, default=str)


def loaded_model(factory: str, kwargs: dict[str, Any]) -> LoadedModel:
    """The callable `factory(**kwargs)` made, built at most once per process."""
    key = model_key(factory, kwargs)
    with _LOCK:  # threads of one worker wait for the first load instead of repeating it
        if key not in _MODELS:
            predict = load_function(factory)(**kwargs)
            if not callable(predict):
                raise TypeError(f"factory {factory} returned {type(predict).__name__}, no callable")
            _MODELS[key] = LoadedModel(predict, _takes_keep(predict))
        return _MODELS[key]


def _takes_keep(fn: Callable[..., Any]) -> bool:
    try:
        return "keep" in inspect.signature(fn).parameters
    except (TypeError, ValueError):  # some builtins and extension types have no signature
        return False


def apply_model(block: np.ndarray, params: ModelParams, ctx: Context, value: Any = None):
    model = loaded_model(params.model, params.kwargs)
    return checked_result(model.predict(block), block, params.dtype, params.model)


def apply_model_cropped(
    block: np.ndarray, params: ModelParams, ctx: Context, value: Any, keep: tuple[slice, ...]
) -> np.ndarray:
    """`apply_model(...)[keep]`, computed on that part only when the callable takes `keep`."""
    model = loaded_model(params.model, params.kwargs)
    if not model.takes_keep:
        return apply_model(block, params, ctx, value)[keep]
    kept = tuple(len(range(*s.indices(n))) for s, n in zip(keep, block.shape, strict=True))
    result = model.predict(block, keep=keep)
    return checked_result(result, block, params.dtype, params.model, kept)


MODEL = OpSpec(
    name="model",
    version="1",
    params=ModelParams,
    kind=lambda p: "blockwise",
    halo=declared_halo,
    dtype=declared_dtype,
    apply=apply_model,
    apply_cropped=apply_model_cropped,
    doc="A user's model: `module:factory` called once per worker process (with kwargs) "
    "returns a callable applied to each chunk plus its declared halo.",
)
