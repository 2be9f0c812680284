"""`op: model`: a user's model factory, loaded once per worker process, applied per chunk
with its halo, placed on workers by resources (real dask cluster, no mocks)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import zarr
from conftest import blobs, write_image
from user_models import contrast

from engine import Pipeline, run
from engine.core.errors import ConfigError, EngineError
from engine.core.pipeline import ClusterSpec
from engine.execute.executor import TaskFailed
from engine.execute.slurm import make_cluster, resource_directives
from engine.runs.planning import make_plan

SHAPE = (20, 70, 50)
ROI = {"z": [3, 17], "y": [10, 61], "x": [5, 50]}  # not chunk-aligned, touches the x border


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("model") / "img.zarr"
    return write_image(path, blobs(SHAPE, seed=4), chunks=(8, 24, 24))


def _pipeline(image: Path, name: str, **params) -> Pipeline:
    return Pipeline(input=str(image)).add(
        name, "model", output={"kind": "image", "name": name}, **params
    )


@pytest.mark.parametrize("factory", ["contrast", "contrast_kept"])
def test_user_model_equals_numpy_on_the_whole_array(
    image: Path, scheduler: str, tmp_path: Path, factory: str
) -> None:
    log = tmp_path / "loads"
    log.mkdir()
    kwargs = {"size": 5, "gain": 2.0, "log": str(log)}
    p = _pipeline(
        image, factory, model=f"user_models:{factory}", kwargs=kwargs, halo=2, dtype="float32"
    )
    result = run(p, roi=ROI, scheduler=scheduler)
    assert result.stages[0].tasks == 3 * 3 * 3
    out = zarr.open_group(str(image), mode="r")[f"results/{factory}/s0"][...]
    whole = contrast(5, 2.0)(zarr.open_group(str(image), mode="r")["s0"][...])
    box = tuple(slice(*ROI[a]) for a in ("z", "y", "x"))
    np.testing.assert_array_equal(out[box], whole[box])
    outside = np.ones(SHAPE, dtype=bool)
    outside[box] = False
    assert not out[outside].any()
    # the factory ran once in each worker process that got chunks, never per chunk
    loads = Counter(f.name.split("-")[0] for f in log.iterdir())
    assert 1 <= len(loads) <= 2 and set(loads.values()) == {1}


def test_batch_size_and_resources_reach_the_plan(image: Path) -> None:
    p = (
        _pipeline(
            image,
            "edges",
            model="user_models:contrast",
            halo=2,
            dtype="float32",
            batch_size=3,
            resources={"gpu": 1},
        )
        .add("mask", "threshold", input="edges", method="value", value=100.0)
        .add("objects", "label", input="mask", output={"kind": "label", "name": "objects"})
    )
    _, plan = make_plan(p, roi=ROI)
    edges, local = plan.stage("edges"), plan.stage("objects/label")
    assert edges.resources == (("gpu", 1.0),) and edges.batch_size == 3
    assert edges.chain[0].halo == (2, 2, 2)
    # the label chain reads the model's output instead of running the model again
    assert local.source.path == "results/edges/s0" and "edges" in local.after
    assert [link.op for link in local.chain] == ["threshold", "label"]
    assert local.resources == () and local.batch_size is None


def test_resources_local_workers_offer_them_and_missing_ones_are_named(
    image: Path, scheduler: str
) -> None:
    p = _pipeline(
        image,
        "gpu_edges",
        model="user_models:contrast",
        halo=2,
        dtype="float32",
        resources={"gpu": 1},
    )
    with pytest.raises(EngineError, match=r"step 'gpu_edges': needs worker resources gpu=1"):
        run(p, roi=ROI, scheduler=scheduler)  # the shared cluster's workers offer none
    assert not (image / "results/gpu_edges").exists()
    result = run(p, roi=ROI, workers=1)  # a local cluster whose worker offers gpu=1
    assert result.outputs == {"gpu_edges": str(image / "results/gpu_edges")}


def test_slurm_worker_jobs_request_the_gpus(tmp_path: Path) -> None:
    spec = ClusterSpec(kind="slurm", cores=2, processes=2, tls=False)
    assert resource_directives(spec, {"gpu": 1}) == (["--gres=gpu:2"], ["--resources", "gpu=1"])
    assert resource_directives(spec, {}) == ([], [])
    one = ClusterSpec(kind="slurm", tls=False)
    with make_cluster(one, None, None, tmp_path, {"gpu": 1}) as cluster:
        script = cluster.job_script()
    assert "#SBATCH --gres=gpu:1" in script
    assert "--resources gpu=1" in script


def test_factory_that_cannot_be_imported_is_one_config_error(image: Path) -> None:
    with pytest.raises(ConfigError) as err:
        _pipeline(image, "seg", model="no_such_module:load", halo=1)
    assert str(err.value).startswith("pipeline: step 'seg': params.model: cannot import module")
    with pytest.raises(ConfigError, match=r"step 'seg': params.model: .* has no function 'nope'"):
        _pipeline(image, "seg", model="user_models:nope")
    with pytest.raises(ConfigError, match=r"step 'seg': params.resources: .*'gpu' needs a pos"):
        _pipeline(image, "seg", model="user_models:contrast", resources={"gpu": 0})


def test_model_returning_the_wrong_shape_names_the_step(image: Path, scheduler: str) -> None:
    p = _pipeline(image, "bad", model="user_models:wrong_shape", halo=1)
    with pytest.raises(TaskFailed, match=r"step 'bad' failed on chunk .*returned shape"):
        run(p, roi=ROI, scheduler=scheduler, retries=0)
