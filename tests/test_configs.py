"""The shipped example configs stay valid and plan against the sample image."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine import Pipeline
from engine.io.sample_zarr import write_sample
from engine.runs.planning import make_plan
from engine.runs.runner import run

CONFIGS_DIR = Path(__file__).parents[1] / "configs"
CONFIGS = sorted(CONFIGS_DIR.glob("*.yaml"))


@pytest.fixture(scope="module")
def sample(tmp_path_factory, scheduler) -> Path:
    """The default sample the example ROIs are made for, with the model that configs
    predicting with a pixel classifier need (trained as the README's loop does)."""
    path = tmp_path_factory.mktemp("configs") / "sample.zarr"
    write_sample(path)
    train = Pipeline.from_yaml(CONFIGS_DIR / "nuclei-train.yaml")
    run(train, path, roi="train", scheduler=scheduler)
    return path


@pytest.mark.parametrize("config", CONFIGS, ids=[c.name for c in CONFIGS])
def test_config_is_valid_and_plans_on_the_sample(config, sample):
    pipeline = Pipeline.from_yaml(config)
    pipeline.check_complete()
    assert Pipeline.build(pipeline.to_dict()) == pipeline
    for roi in [None, *pipeline.rois]:
        _, plan = make_plan(pipeline, sample, roi)
        assert plan.task_count > 0


def test_there_are_example_configs():
    names = {c.name for c in CONFIGS}
    assert {
        "nuclei.yaml",
        "nuclei-measure.yaml",
        "nuclei-slurm.yaml",
        "nuclei-evaluate.yaml",
        "nuclei-train.yaml",
        "adjust-test-eval.yaml",
    } <= names
