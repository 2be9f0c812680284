"""What an op is: a pure numpy function plus the facts the compiler needs.

Ops never see dask, zarr or engine code. The engine reads the spec to know how
far an op reaches beyond its output box (halo), what it produces (dtype), and
whether it needs a value computed over the whole ROI first (reduction) or a
pass over the whole ROI after (global).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict

Kind = Literal["blockwise", "reduction", "global"]

LENGTH_UNITS_IN_MICROMETER: dict[str, float] = {
    "angstrom": 1e-4,
    "nanometer": 1e-3,
    "micrometer": 1.0,
    "millimeter": 1e3,
    "centimeter": 1e4,
    "meter": 1e6,
}


class Params(BaseModel):
    """Base of every op's parameter schema: unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", frozen=True)


@dataclass(frozen=True)
class Context:
    """What an op may know about where its block lives.

    spacing: physical voxel size of each spatial axis, in micrometers (1.0 where the
    image gives no unit), so ops can take parameters in physical units.
    """

    spacing: tuple[float, ...]


@dataclass(frozen=True)
class Reduction:
    """A map-reduce over the ROI in one or more passes.

    Pass k maps each block to a partial (knowing the value of pass k-1), partials are
    combined pairwise, and ``finish`` turns the combined partial into the pass value.
    The last pass value is what ``OpSpec.apply`` receives.
    """

    passes: int
    map: Callable[[np.ndarray, Any, int, Any], Any]
    combine: Callable[[Any, Any], Any]
    finish: Callable[[Any, Any, int, Any], Any]


@dataclass(frozen=True)
class OpSpec:
    name: str
    version: str
    params: type[Params]
    kind: Callable[[Any], Kind]
    halo: Callable[[Any, Context], tuple[int, ...]]
    dtype: Callable[[Any, np.dtype], np.dtype]
    apply: Callable[..., np.ndarray]
    reduction: Callable[[Any], Reduction | None] = field(default=lambda params: None)
    doc: str = ""
    # apply_cropped(block, params, ctx, value, keep) == apply(block, params, ctx, value)[keep],
    # for ops that can skip work outside `keep` (the block minus its halo)
    apply_cropped: Callable[..., np.ndarray] | None = None
    # modules `apply` (and the reduction) load on first use, for whoever runs the op to
    # load ahead, in the background (the default: scipy.ndimage and scikit-image's
    # filters, tasks/backends.py); () for an op of numpy and compiled kernels alone
    loads: Callable[[Any], tuple[str, ...]] = field(default=lambda params: ("tasks.backends",))
    # "model": the step writes a model artifact (`_engine/models/<params.model>`), not an
    # image; `apply` is its per-block map (the features of the annotated voxels)
    artifact: Literal["model"] | None = None


def done_by_engine(reason: str) -> Callable[..., Any]:
    """An OpSpec callable for what the engine does itself instead (a table, a model's
    halo from its artifact): one that raises, saying so, if anything calls it."""

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise TypeError(reason)

    return refuse


def check_each(value: Any, ok: Callable[[float], bool], rule: str) -> Any:
    """`value` (one number, or a list of one per axis) if every number in it is `ok`,
    else a ValueError stating `rule`. For field validators: a constraint on the union
    of a number and a list cannot apply to the list form."""
    values = value if isinstance(value, list) else [value]
    if not values or not all(ok(v) for v in values):
        raise ValueError(f"{rule} (got {value})")
    return value


def table_op(name: str, version: str, params: type[Params], doc: str) -> OpSpec:
    """The spec of an op whose result is a table (measure, evaluate): the engine runs it as
    a stage of its own over the ROI, so it has no halo, and a call as a blockwise function
    is a mistake."""
    return OpSpec(
        name=name,
        version=version,
        params=params,
        kind=lambda p: "global",
        halo=lambda p, ctx: (0,) * len(ctx.spacing),
        dtype=lambda p, dtype: np.dtype(np.float64),
        apply=done_by_engine(f"op '{name}' makes a table: the engine runs it as its own stage"),
        doc=doc,
    )


def per_axis(value: float | Sequence[float], ndim: int, what: str) -> tuple[float, ...]:
    """Broadcast a scalar parameter to every spatial axis, or check a per-axis list."""
    if isinstance(value, int | float):
        return (float(value),) * ndim
    values = tuple(float(v) for v in value)
    if len(values) != ndim:
        raise ValueError(f"{what} has {len(values)} values but the image has {ndim} spatial axes")
    return values
