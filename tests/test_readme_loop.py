"""The README's loop, end to end, as a user runs it: train on ROI `train`, predict and
evaluate on ROI `test`, look at it, change a parameter, compare versions, re-run."""

from __future__ import annotations

from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import yaml
import zarr
from conftest import CONFIGS, SampleImages

from engine import Pipeline
from engine.runs.runner import run


@pytest.fixture(scope="module")
def sample(sample_image: SampleImages, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("loop") / "sample.zarr"
    return sample_image((64, 256, 256), (32, 64, 64), copy_to=path)


def test_adjust_test_evaluate_then_full_image(sample, scheduler, tmp_path, cli):
    train = Pipeline.from_yaml(CONFIGS / "nuclei-train.yaml")
    run(train, sample, roi="train", scheduler=scheduler)
    assert (sample / "_engine/models/nuclei_rf/model.joblib").is_file()

    loop = Pipeline.from_yaml(CONFIGS / "adjust-test-eval.yaml")
    first = run(loop, sample, roi="test", scheduler=scheduler)
    scores = first.evaluations["nuclei_rf_eval"]
    assert scores.dice >= 0.85 and scores.f1 > 0.5, scores
    written = iio.imread(first.previews["nuclei_rf_eval"])  # the evaluate step's own PNG
    assert written.ndim == 3 and written.std() > 0

    preview = tmp_path / "test.png"
    assert cli(["preview", str(sample), "--roi", "test", "--labels", "nuclei_rf",
                "--out", str(preview)]).code == 0  # fmt: skip
    picture = iio.imread(preview)
    assert picture.ndim == 3 and picture.std() > 0

    # adjust: a stricter threshold; the probabilities are reused, the rest is a version 2
    data = yaml.safe_load((CONFIGS / "adjust-test-eval.yaml").read_text())
    data["steps"][1]["params"]["value"] = 0.6
    changed = Pipeline.build(data)
    second = run(changed, sample, roi="test", scheduler=scheduler)
    assert "nuclei_prob" in second.reused
    assert {"nuclei_rf.v2", "nuclei_rf_eval.v2"} <= set(second.outputs)
    assert second.evaluations["nuclei_rf_eval.v2"].dice != scores.dice

    ran = cli(["info", str(sample)])
    assert ran.code == 0
    info = ran.out
    assert "nuclei_rf.v2" in info and "0.5 -> 0.6" in info
    ran = cli(["diff", str(sample), "nuclei_rf.v2", "nuclei_rf", "--roi", "test",
               "--scheduler", scheduler])  # fmt: skip
    assert ran.code == 0
    assert "Dice" in ran.out

    again = run(changed, sample, roi="test", scheduler=scheduler)
    assert again.tasks_done == 0

    whole = run(changed, sample, scheduler=scheduler, update=True)
    assert whole.tasks_done > 0
    labels = zarr.open_array(str(sample / "labels/nuclei_rf.v2/s0"))[...]
    # every voxel of the image rewritten: this run's ids only (continuing after ROI test's)
    assert len(np.unique(labels)) - 1 == whole.labels["nuclei_rf.v2"]
