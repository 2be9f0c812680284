"""Shared fixtures and helpers (helper modules beside this one: bad_input.py, slurm_jobs.py,
ngff_by_hand.py; user code that pipelines name as `module:function`: user/).

- `scheduler`: one real 2-worker dask LocalCluster for the session;
- `slurm`, `slurm_reference`: the dev SLURM cluster, and the standard pipeline's local
  output on the SLURM tests' sample;
- `sample_image`: the synthetic nuclei sample (`ngff-engine sample`), written once per
  parameter set and session, copied for a test that writes into it (`image3d`,
  `image2d`: two of them, read only);
- `write_image`, `blobs`, `huge_image`, `image_with_a_bad_voxel`: images of a test's own
  data (or metadata only);
- `tree_hash`: every file under a folder, hashed (inputs stay byte-identical);
  `read_table`: a table read back by anndata;
- `cli`: the command in-process (`engine.cli.commands.main`), its exit code and output;
  `expect_user_error`: the bad-input contract (exit 2, one line, nothing changed);
- `engine_command`, `engine_environment`: the command as a process, finding `user.*`.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import subprocess
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

import anndata
import numpy as np
import pytest
import zarr
from distributed import LocalCluster
from ome_images import huge_image, write_image  # noqa: F401 (tests import them from here)

from engine import Pipeline, run
from engine.cli.commands import main
from engine.io.sample_zarr import write_sample

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent
CONFIGS = REPO / "configs"
# an output's metadata files: they hold run ids and times, so runs that computed the same
# voxels differ there
METADATA_FILES = frozenset({"zarr.json", ".zattrs", ".zarray", ".zgroup"})
# the standard pipeline (configs/nuclei.yaml without its ROIs)
NUCLEI = (
    Pipeline()
    .add("smooth", "gaussian", sigma=2.0)
    .add("mask", "threshold", "smooth", method="otsu")
    .add("nuclei", "label", "mask", {"kind": "label", "name": "nuclei"})
)


# --- a dask cluster ----------------------------------------------------------------------

# Runs in tests start clusters of their own (or use the session's `scheduler`), as they did
# before the warm engine and the in-process path for small runs; tests/test_warm.py and
# tests/test_in_process.py turn them on.
os.environ["NGFF_ENGINE_WARM"] = "0"
os.environ["NGFF_ENGINE_IN_PROCESS_MAX"] = "0"


@pytest.fixture(scope="session")
def scheduler() -> Iterator[str]:
    """Address of a real 2-worker dask cluster (processes), shared by all tests."""
    with LocalCluster(
        n_workers=2,
        threads_per_worker=1,
        processes=True,
        host="127.0.0.1",
        dashboard_address="127.0.0.1:0",
        silence_logs=logging.ERROR,
    ) as cluster:
        yield cluster.scheduler_address


# --- SLURM ---------------------------------------------------------------------------------

# the SLURM tests' sample: 32x128x128 in 16x64x64 chunks (8 chunks), to keep them short
SLURM_SAMPLE = ((32, 128, 128), (16, 64, 64))


@pytest.fixture(scope="session")
def slurm() -> str:
    """The real one-node SLURM of slurm/dev-cluster.sh, started if it is not running (the
    first start may apt-get install slurm and munge: a generous bound); its partition."""
    proc = subprocess.run(
        ["bash", str(REPO / "slurm" / "dev-cluster.sh"), "start"],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, f"dev-cluster.sh start failed:\n{proc.stdout}\n{proc.stderr}"
    return "debug"


@pytest.fixture(scope="session")
def slurm_reference(
    sample_image: SampleImages, scheduler: str, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """The standard pipeline on the SLURM sample on the session's local 2-worker cluster
    (not one of its own: 2 to 4 s less): the output every SLURM run of it must equal."""
    image = sample_image(*SLURM_SAMPLE, copy_to=tmp_path_factory.mktemp("local") / "sample.zarr")
    started = time.perf_counter()
    result = run(Pipeline.from_yaml(CONFIGS / "nuclei.yaml"), input=image, scheduler=scheduler)
    print(f"local run (2 workers): {time.perf_counter() - started:.1f} s")
    assert result.labels["nuclei"] > 10
    return image


# --- images ------------------------------------------------------------------------------


class SampleImages:
    """The nuclei sample of `write_sample` (image, labels/truth, labels/annotations, the ROI
    table with `train` and `test`), written once per (shape, chunks, version, seed) in a
    session. Called without `copy_to` it gives that one image, to read only; with
    `copy_to`, a fresh copy at that path, for a test that writes into the image."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.written: dict[tuple, Path] = {}

    def __call__(
        self,
        shape: tuple[int, ...] = (8, 64, 64),
        chunks: tuple[int, ...] | None = None,
        version: str = "0.5",
        seed: int = 0,
        *,
        copy_to: Path | None = None,
    ) -> Path:
        key = (tuple(shape), tuple(chunks) if chunks else None, version, seed)
        if key not in self.written:
            name = "x".join(map(str, shape)) + ("-" + "x".join(map(str, chunks)) if chunks else "")
            path = self.folder / f"{name}-v{version}-seed{seed}.zarr"
            write_sample(path, tuple(shape), chunks and tuple(chunks), version, seed)
            self.written[key] = path
        if copy_to is None:
            return self.written[key]
        shutil.copytree(self.written[key], copy_to)
        return copy_to


@pytest.fixture(scope="session")
def sample_image(tmp_path_factory: pytest.TempPathFactory) -> SampleImages:
    """`sample_image(shape, chunks, version, seed)`: the shared sample (read only);
    `sample_image(..., copy_to=tmp_path / "image.zarr")`: a copy of it to write into."""
    return SampleImages(tmp_path_factory.mktemp("samples"))


@pytest.fixture(scope="session")
def image3d(sample_image: SampleImages) -> Path:
    """The (8, 64, 64) sample in 4x32x32 chunks, NGFF 0.5: read only."""
    return sample_image((8, 64, 64), (4, 32, 32), "0.5", seed=1)


@pytest.fixture(scope="session")
def image2d(sample_image: SampleImages) -> Path:
    """The (64, 64) sample in 32x32 chunks, NGFF 0.4: read only."""
    return sample_image((64, 64), (32, 32), "0.4", seed=2)


def nuclei_config(tmp_path: Path, cluster: dict | None = None) -> Path:
    """The standard pipeline as a config file in `tmp_path`, with `cluster` settings."""
    data = NUCLEI.to_dict()
    if cluster is not None:
        data["cluster"] = cluster
    config = tmp_path / "p.yaml"
    config.write_text(Pipeline.build(data).to_yaml())
    return config


def blobs(shape: tuple[int, ...], seed: int = 0, sigma: float = 2.0) -> np.ndarray:
    """Smooth random uint16 data whose Otsu mask has many objects of varied shapes."""
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    field = ndimage.gaussian_filter(rng.random(shape), sigma)
    field = (field - field.min()) / (field.max() - field.min() + 1e-12)
    noise = rng.normal(0, 0.03, shape)
    return np.clip((field + noise) * 4000 + 100, 0, 65535).astype(np.uint16)


# a voxel value the sample never has: `user.ops:fail_on_value` fails on the chunk holding it
BAD_VALUE = 65535


def image_with_a_bad_voxel(
    sample_image: SampleImages, path: Path, chunks: tuple[int, ...] = (4, 32, 32)
) -> Path:
    """An (8, 64, 64) sample with BAD_VALUE at [5, 40, 40] (z 4..8 only; in chunk
    (1, 1, 1) of 4x32x32 chunks)."""
    image = sample_image((8, 64, 64), chunks, "0.5", copy_to=path)
    s0 = zarr.open_array(str(image / "s0"), mode="r+")
    assert int(s0[...].max()) < BAD_VALUE
    s0[5, 40, 40] = BAD_VALUE
    return image


def function_pipeline(function: str, kwargs: dict[str, Any], **output: Any) -> Pipeline:
    """One step 'custom': the user function `function` writing results/custom."""
    step = {
        "name": "custom",
        "op": "function",
        "input": "image",
        "params": {"function": function, "kwargs": kwargs},
        "output": {"kind": "image", "name": "custom", **output},
    }
    return Pipeline.build({"steps": [step]})


# --- what a run wrote ----------------------------------------------------------------------


def tree_hash(root: Path, skip: tuple[str, ...] = (), *, chunks_only: bool = False) -> dict:
    """Every file under `root` by its relative path, with a hash of its bytes, and every
    folder as "<dir>": equal before and after means nothing under `root` was added,
    removed or changed. `skip`: relative paths left out with all below them;
    `chunks_only`: the chunk files alone (no folders, no METADATA_FILES)."""
    out = {}
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root).as_posix()
        if any(rel == s or rel.startswith(s + "/") for s in skip):
            continue
        if chunks_only and (p.is_dir() or p.name in METADATA_FILES):
            continue
        out[rel] = hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "<dir>"
    return out


def read_table(image: Path, name: str) -> anndata.AnnData:
    """tables/<name> of an image, read back by anndata (its warnings about the zarr
    format aside)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return anndata.read_zarr(str(image / "tables" / name))


def same_partition(a: np.ndarray, b: np.ndarray) -> bool:
    """True when two label images describe the same objects (any ids)."""
    if a.shape != b.shape or not np.array_equal(a == 0, b == 0):
        return False
    fg = a != 0
    pairs = np.unique(np.stack([a[fg], b[fg]], axis=1), axis=0)
    return len(np.unique(pairs[:, 0])) == len(pairs) == len(np.unique(pairs[:, 1]))


# --- the command -------------------------------------------------------------------------


class CliResult(NamedTuple):
    code: int
    out: str
    err: str

    @property
    def output(self) -> str:
        return self.out + self.err


Cli = Callable[[list[str]], CliResult]


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str]) -> Cli:
    """`cli([...])`: `engine.cli.commands.main` in this process; its exit code and what it
    printed to stdout and stderr (argparse's usage errors exit through SystemExit)."""

    def call(argv: list[str]) -> CliResult:
        capsys.readouterr()  # what earlier calls printed is theirs
        try:
            code = main(argv)
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        captured = capsys.readouterr()
        return CliResult(code, captured.out, captured.err)

    return call


def expect_user_error(cli: Cli, argv: list[str], watched: list[Path], *words: str) -> str:
    """Run the CLI; it must refuse with exit 2 and one line naming `words`, changing nothing
    under the `watched` folders. Returns that line."""
    before = {p: tree_hash(p) for p in watched}
    result = cli(argv)
    output = result.output
    assert result.code == 2, output
    assert "Traceback" not in output
    lines = [line for line in output.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one line, got: {output!r}"
    line = lines[0]
    assert line.startswith("error: "), line
    for word in words:
        assert word in line, f"{word!r} not in {line!r}"
    for p in watched:
        assert tree_hash(p) == before[p], f"{p} changed"
    return line


def engine_command() -> str:
    """The installed `ngff-engine` command (beside this Python, else on PATH)."""
    beside = Path(sys.executable).with_name("ngff-engine")
    found = str(beside) if beside.exists() else shutil.which("ngff-engine")
    assert found, "the ngff-engine command is not installed"
    return found


def pythonpath_with_tests() -> str:
    """PYTHONPATH for a process (or SLURM job) that must import `user.*` as workers do."""
    return os.pathsep.join(p for p in (str(TESTS), os.environ.get("PYTHONPATH")) if p)


def engine_environment() -> dict[str, str]:
    """This process's environment, with tests/ on PYTHONPATH."""
    return {**os.environ, "PYTHONPATH": pythonpath_with_tests()}


# --- servers ------------------------------------------------------------------------------


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
