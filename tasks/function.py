"""A user's own numpy function as a blockwise op, given as ``module:function``.

The function gets the block (with the declared halo around it) and the keyword
arguments from ``kwargs``, and must return an array of the same shape. The
halo is declared, not guessed: the engine can only be exact if it knows how
far the function looks.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

import numpy as np
from pydantic import Field, field_validator

from tasks.spec import Context, OpSpec, Params, per_axis


class FunctionParams(Params):
    function: str
    halo: int | list[int] = 0
    dtype: str | None = None
    kwargs: dict[str, Any] = Field(default_factory=dict)

    @field_validator("function")
    @classmethod
    def _importable(cls, path: str) -> str:
        load_function(path)
        return path

    @field_validator("dtype")
    @classmethod
    def _known_dtype(cls, dtype: str | None) -> str | None:
        if dtype is not None:
            np.dtype(dtype)
        return dtype


def load_function(path: str) -> Callable[..., np.ndarray]:
    module_name, sep, attr = path.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"'{path}' is not of the form 'module:function'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(f"cannot import module '{module_name}': {exc}") from exc
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise ValueError(f"module '{module_name}' has no function '{attr}'")
    return fn


def call_function(block: np.ndarray, params: FunctionParams, ctx: Context, value: Any = None):
    result = np.asarray(load_function(params.function)(block, **params.kwargs))
    if result.shape != block.shape:
        raise ValueError(
            f"{params.function} returned shape {result.shape} for a block of shape {block.shape}"
        )
    if params.dtype is not None:
        return result.astype(params.dtype, copy=False)
    if result.dtype != block.dtype:
        raise ValueError(
            f"{params.function} returned {result.dtype} for a {block.dtype} block; "
            f"declare params.dtype: {result.dtype}"
        )
    return result


def _dtype(params: FunctionParams, dtype: np.dtype) -> np.dtype:
    return np.dtype(params.dtype) if params.dtype is not None else np.dtype(dtype)


FUNCTION = OpSpec(
    name="function",
    version="1",
    params=FunctionParams,
    kind=lambda p: "blockwise",
    halo=lambda p, ctx: tuple(int(h) for h in per_axis(p.halo, len(ctx.spacing), "halo")),
    dtype=_dtype,
    apply=call_function,
    doc="A user function `module:function` applied blockwise with a declared halo.",
)
