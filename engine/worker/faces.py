"""The face arrays of label stages: where a chunk's boundary planes (label) or the band
around its borders (segment) are kept, so the pass that pairs ids across chunk borders
reads only those planes, never the chunks they came from. Used by the compiler's
outputs, the run that creates the arrays and the workers that fill and read them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from engine.core.geometry import Roi

if TYPE_CHECKING:
    from engine.plan.types import Stage


def face_array_path(local: str, axis: int) -> str:
    """Where a label stage keeps the boundary planes of its chunks along one axis."""
    return f"{local}-faces-{axis}"


def face_planes(stage: Stage, axis: int) -> int:
    """Planes per face along `axis` in the face arrays of a label, segment or match stage.

    Label keeps the one boundary plane on each side of a chunk; segment keeps the
    band of twice the overlap around each border, which both chunks meeting there
    segmented (the overlap is the halo of its op's link, the last of its chain).
    """
    return 2 * stage.chain[-1].halo[axis] if stage.kind in ("segment", "match") else 1


def face_array_layout(
    shape: Sequence[int], chunks: Sequence[int], axis: int, planes: int = 1
) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Shape and chunks of a face array: two faces (low, high) of `planes` planes per
    chunk along `axis`.

    With one face per zarr chunk, reading the two faces that meet at a chunk border
    decodes only those faces, never the chunks they came from.
    """
    n = -(-shape[axis] // chunks[axis])
    face_shape = tuple(2 * n * planes if i == axis else s for i, s in enumerate(shape))
    face_chunks = tuple(planes if i == axis else c for i, c in enumerate(chunks))
    return face_shape, face_chunks


def face_box(
    box: Roi, index: Sequence[int], axis: int, first: int, faces: int = 1, planes: int = 1
) -> Roi:
    """`box` in face-array coordinates: `faces` faces of `planes` planes each, from face
    `first` (0 low, 1 high) of chunk `index` along `axis`."""
    start, stop = list(box.start), list(box.stop)
    start[axis] = (2 * index[axis] + first) * planes
    stop[axis] = start[axis] + faces * planes
    return Roi(tuple(start), tuple(stop), box.level)
