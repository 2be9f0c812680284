"""The shipped example configs stay valid and plan against the sample image."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine import Pipeline
from engine.run import make_plan
from engine.sample_zarr import write_sample

CONFIGS = sorted((Path(__file__).parents[1] / "configs").glob("*.yaml"))


@pytest.fixture(scope="module")
def sample(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("configs") / "sample.zarr"
    write_sample(path)  # the default sample the example ROIs are made for
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
    } <= names
