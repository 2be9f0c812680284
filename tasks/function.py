"""A user's own numpy function as a blockwise op, given as ``module:function``.

The function gets the block (with the declared halo around it) and the keyword
arguments from ``kwargs``, and must return an array of the same shape. The
halo is declared, not guessed: the engine can only be exact if it knows how
far the function looks.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Annotated, Any

import numpy as np
from pydantic import AfterValidator, Field, field_validator

from tasks.spec import Context, OpSpec, Params, per_axis


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


def importable(path: str) -> str:
    """A `module:name` path whose module imports and has the name: checked when the
    pipeline is built, so a typo is a config error, not a failure on every worker."""
    load_function(path)
    return path


ImportPath = Annotated[str, AfterValidator(importable)]


class UserCallableParams(Params):
    """What the engine must be told about user code: how far it looks (halo, in pixels
    per spatial axis or one for all) and what it returns (dtype; default the input's)."""

    halo: int | list[int] = 0
    dtype: str | None = None
    kwargs: dict[str, Any] = Field(default_factory=dict)

    @field_validator("dtype")
    @classmethod
    def _known_dtype(cls, dtype: str | None) -> str | None:
        if dtype is not None:
            np.dtype(dtype)
        return dtype


class FunctionParams(UserCallableParams):
    function: ImportPath


def call_function(block: np.ndarray, params: FunctionParams, ctx: Context, value: Any = None):
    result = load_function(params.function)(block, **params.kwargs)
    return checked_result(result, block, params.dtype, params.function)


def checked_result(
    result: Any,
    block: np.ndarray,
    dtype: str | None,
    what: str,
    kept: tuple[int, ...] | None = None,
) -> np.ndarray:
    """A user callable's result as the engine needs it: the block's shape (or `kept`, the
    shape of the part the engine keeps, when the callable was asked for that part only)
    and the declared dtype, or the block's when none is declared (the plan fixes dtypes
    before running)."""
    result = np.asarray(result)
    expected = block.shape if kept is None else kept
    if result.shape != expected:
        part = "" if kept is None else f" (asked for its part of shape {kept})"
        raise ValueError(
            f"{what} returned shape {result.shape} for a block of shape {block.shape}{part}"
        )
    if dtype is not None:
        return result.astype(dtype, copy=False)
    if result.dtype != block.dtype:
        raise ValueError(
            f"{what} returned {result.dtype} for a {block.dtype} block; "
            f"declare params.dtype: {result.dtype}"
        )
    return result


def declared_dtype(params: UserCallableParams, dtype: np.dtype) -> np.dtype:
    return np.dtype(params.dtype) if params.dtype is not None else np.dtype(dtype)


def declared_halo(params: UserCallableParams, ctx: Context) -> tuple[int, ...]:
    return tuple(int(h) for h in per_axis(params.halo, len(ctx.spacing), "halo"))


FUNCTION = OpSpec(
    name="function",
    version="1",
    params=FunctionParams,
    kind=lambda p: "blockwise",
    halo=declared_halo,
    dtype=declared_dtype,
    apply=call_function,
    doc="A user function `module:function` applied blockwise with a declared halo.",
)
