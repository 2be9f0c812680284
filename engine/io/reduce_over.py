"""One reduction over several regions: all fields of a plate (`reduce_over: plate`) or
all ROIs of an image (`reduce_over: image`), computed from the arrays a first pass wrote.

The op's own `Reduction` (tasks/): every pass maps each chunk of every region to a
partial, combines them all, and finishes with the value of the pass before; the last
value is the step's (e.g. one Otsu threshold). Chunks are read one at a time, so memory
does not grow with the plate. Deterministic: regions and chunks in a fixed order.
"""

from __future__ import annotations

import itertools
import shutil
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from engine.core.geometry import Roi
from engine.io.metadata import read_image
from tasks import OPS

# (image path, path of the array inside it, box on that array's axes)
Region = tuple[str, str, Roi]


def level0_path(image: str, group: str) -> str:
    """The level-0 array of a multiscale group inside an image ("" is the image itself)."""
    meta = read_image(Path(image) / group if group else image, validate=False)
    return f"{group}/{meta.levels[0].path}" if group else meta.levels[0].path


def reduce_regions(op: str, params: dict[str, Any], regions: Sequence[Region]) -> float:
    """The op's reduction over every region together."""
    spec = OPS[op]
    typed = spec.params.model_validate(params)
    reduction = spec.reduction(typed)
    if reduction is None:
        raise ValueError(f"op '{op}' with these params is no reduction")
    value: Any = None
    for pass_no in range(reduction.passes):
        combined: Any = None
        for image, path, box in regions:
            array = zarr.open_array(str(Path(image) / path), mode="r")
            for block in _blocks(array, box):
                partial = reduction.map(block, typed, pass_no, value)
                combined = partial if combined is None else reduction.combine(combined, partial)
        value = reduction.finish(combined, typed, pass_no, value)
    return float(value)


def _blocks(array: zarr.Array, box: Roi) -> Iterator[np.ndarray]:
    """The box, chunk by chunk of the array (blocks cut to the box), one at a time."""
    chunks = array.chunks
    ranges = [
        range(int(a) // c * c, int(b), c)
        for a, b, c in zip(box.start, box.stop, chunks, strict=True)
    ]
    for corner in itertools.product(*ranges):
        where = tuple(
            slice(max(int(a), k), min(int(b), k + c))
            for a, b, k, c in zip(box.start, box.stop, corner, chunks, strict=True)
        )
        yield np.asarray(array[where])


def remove_result(image: str, name: str) -> None:
    """Remove `results/<name>` (a first pass's array) and its listing."""
    folder = Path(image) / "results" / name
    if folder.exists():
        shutil.rmtree(folder)
    results = Path(image) / "results"
    if results.exists():
        group = zarr.open_group(str(results), mode="r+")
        listed = [n for n in group.attrs.get("results", []) if n != name]
        group.attrs.update({"results": listed})
