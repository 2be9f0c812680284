"""Shared fixtures: one real dask LocalCluster for the session, and image writers."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import pytest
import zarr
from distributed import LocalCluster

from engine.io.metadata import Axis
from engine.io.ngff_write import LevelSpec, create_image, zarr_format

TESTS = Path(__file__).parent

# Runs in tests start clusters of their own (or use the session's `scheduler`), as they did
# before the warm engine; tests/test_warm.py turns it on, in a folder of its own.
os.environ["NGFF_ENGINE_WARM"] = "0"


@pytest.fixture(scope="session")
def scheduler() -> str:
    """Address of a real 2-worker dask cluster (processes), shared by all tests."""
    with LocalCluster(
        n_workers=2,
        threads_per_worker=1,
        processes=True,
        dashboard_address=":0",
        silence_logs=logging.ERROR,
    ) as cluster:
        yield cluster.scheduler_address


def write_image(
    path: Path,
    data: np.ndarray,
    chunks: tuple[int, ...],
    version: str = "0.5",
    names: tuple[str, ...] | None = None,
    scale: tuple[float, ...] | None = None,
    levels: int = 2,
) -> Path:
    """An OME-Zarr image of `data` with `levels` levels, downsampled by 2 in y and x."""
    names = names or ("z", "y", "x")[-data.ndim :]
    types = {"t": "time", "c": "channel"}
    axes = tuple(
        Axis(
            n, types.get(n, "space"), None if n == "c" else ("second" if n == "t" else "micrometer")
        )
        for n in names
    )
    scale = scale or tuple(1.0 for _ in names)
    specs, arrays, current = [], [], data
    for k in range(levels):
        factors = tuple(2**k if n in ("y", "x") else 1 for n in names)
        specs.append(
            LevelSpec(
                f"s{k}",
                current.shape,
                tuple(min(c, s) for c, s in zip(chunks, current.shape, strict=True)),
                tuple(s * f for s, f in zip(scale, factors, strict=True)),
                (0.0,) * data.ndim,
            )
        )
        arrays.append(current)
        step = tuple(2 if n in ("y", "x") else 1 for n in names)
        current = current[tuple(slice(None, None, s) for s in step)]
    root = zarr.open_group(str(path), mode="w", zarr_format=zarr_format(version))
    create_image(root, "", version=version, axes=axes, levels=specs, dtype=data.dtype, name="img")
    for spec, array in zip(specs, arrays, strict=True):
        root[spec.path][...] = array
    return path


def blobs(shape: tuple[int, ...], seed: int = 0, sigma: float = 2.0) -> np.ndarray:
    """Smooth random uint16 data whose Otsu mask has many objects of varied shapes."""
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    field = ndimage.gaussian_filter(rng.random(shape), sigma)
    field = (field - field.min()) / (field.max() - field.min() + 1e-12)
    noise = rng.normal(0, 0.03, shape)
    return np.clip((field + noise) * 4000 + 100, 0, 65535).astype(np.uint16)


def same_partition(a: np.ndarray, b: np.ndarray) -> bool:
    """True when two label images describe the same objects (any ids)."""
    if a.shape != b.shape or not np.array_equal(a == 0, b == 0):
        return False
    fg = a != 0
    pairs = np.unique(np.stack([a[fg], b[fg]], axis=1), axis=0)
    return len(np.unique(pairs[:, 0])) == len(pairs) == len(np.unique(pairs[:, 1]))


@pytest.fixture(scope="session")
def s3():
    """moto's standalone S3 server on 127.0.0.1 (tests/servers.py)."""
    from servers import s3_server

    with s3_server() as server:
        yield server


@pytest.fixture(scope="session")
def served(tmp_path_factory: pytest.TempPathFactory):
    """Python's http.server serving a folder (tests/servers.py); tests put zarrs in it."""
    from servers import http_server

    with http_server(tmp_path_factory.mktemp("served")) as server:
        yield server
