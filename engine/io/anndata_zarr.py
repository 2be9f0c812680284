"""A feature table (float columns, rows named by strings) written as the AnnData group
anndata writes for it, without importing anndata.

Importing anndata (and pandas with it) took 0.65 s after numpy and zarr on a quiet
2-core machine: more than the whole computation of a small run, paid by every run that
writes a table. The group is small and fixed: X, obs and var with their index, the empty
dict groups and a null `raw`, each with anndata's `encoding-type` and
`encoding-version`; zarr picks the same array defaults (chunks, codecs, v2 or v3 as the
parent) as when anndata calls it. tests/test_tables_measure.py writes the same table
through anndata and checks the two trees are byte for byte the same, in both zarr
formats, so an anndata release that writes differently is noticed; reading stays with
anndata (engine/io/tables.py `read_anndata`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import zarr
from zarr.core.dtype import VariableLengthUTF8

EMPTY = ("layers", "obsm", "obsp", "uns", "varm", "varp")


def _encoded(node: zarr.Group | zarr.Array, kind: str, version: str) -> None:
    node.attrs.update({"encoding-type": kind, "encoding-version": version})


def _strings(group: zarr.Group, name: str, values: Sequence[str]) -> None:
    array = group.create_array(name, shape=(len(values),), dtype=VariableLengthUTF8())
    array[...] = np.array(values, dtype=object)
    _encoded(array, "string-array", "0.2.0")


def write_feature_table(
    parent: zarr.Group,
    name: str,
    values: np.ndarray,
    rows: Sequence[str],
    columns: Sequence[str],
    index_name: str,
) -> zarr.Group:
    """`parent/name`: an AnnData of X = `values` (float64), obs named `rows` (index
    `index_name`), var named `columns`."""
    table = parent.create_group(name)
    _encoded(table, "anndata", "0.1.0")
    _encoded(table.create_array("X", data=np.asarray(values, dtype=np.float64)), "array", "0.2.0")
    for frame, index, names in (("obs", index_name, rows), ("var", "_index", columns)):
        group = table.create_group(frame)
        group.attrs.update({"_index": index, "column-order": []})
        _encoded(group, "dataframe", "0.2.0")
        _strings(group, index, names)
    for empty in EMPTY:
        _encoded(table.create_group(empty), "dict", "0.1.0")
    _encoded(table.create_array("raw", shape=(), dtype=bool), "null", "0.1.0")
    return table
