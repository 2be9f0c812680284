"""The README's loop, end to end, as a user runs it: train on ROI `train`, predict and
evaluate on ROI `test`, look at it, change a parameter, compare versions, re-run."""

from __future__ import annotations

from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import yaml
import zarr

from engine import Pipeline
from engine.cli.commands import main
from engine.io.sample_zarr import write_sample
from engine.runs.runner import run

CONFIGS = Path(__file__).parents[1] / "configs"


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("loop") / "sample.zarr"
    write_sample(path, (64, 256, 256), chunks=(32, 64, 64))
    return path


def test_adjust_test_evaluate_then_full_image(sample, scheduler, tmp_path, capsys):
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
    assert main(["preview", str(sample), "--roi", "test", "--labels", "nuclei_rf",
                 "--out", str(preview)]) == 0  # fmt: skip
    picture = iio.imread(preview)
    assert picture.ndim == 3 and picture.std() > 0

    # adjust: the README's stricter threshold, a visible change; the probabilities are
    # reused, the rest is a version 2, its scores printed next to version 1's
    data = yaml.safe_load((CONFIGS / "adjust-test-eval.yaml").read_text())
    data["steps"][1]["params"]["value"] = 0.9
    changed = Pipeline.build(data)
    second = run(changed, sample, roi="test", scheduler=scheduler)
    assert "nuclei_prob" in second.reused
    assert {"nuclei_rf.v2", "nuclei_rf_eval.v2"} <= set(second.outputs)
    new = second.evaluations["nuclei_rf_eval.v2"]
    assert abs(new.dice - scores.dice) > 0.02 and abs(new.f1 - scores.f1) > 0.05, (new, scores)
    before, old = second.previous_evaluations["nuclei_rf_eval.v2"]
    assert before == "nuclei_rf_eval" and old == scores
    from engine.cli.render import print_result

    capsys.readouterr()
    print_result(second)
    printed = capsys.readouterr().out
    assert f"Dice {scores.dice:.4f} -> {new.dice:.4f}" in printed, printed
    assert f"F1 {scores.f1:.4f} -> {new.f1:.4f}" in printed

    assert main(["info", str(sample)]) == 0
    info = capsys.readouterr().out
    assert "nuclei_rf.v2" in info and "0.5 -> 0.9" in info
    # each version's scores, per ROI
    key = "z=0:64,y=128:256,x=128:256"
    assert f"{key}: Dice {scores.dice:.4f}" in info and f"{key}: Dice {new.dice:.4f}" in info
    assert main(["diff", str(sample), "nuclei_rf.v2", "nuclei_rf", "--roi", "test",
                 "--scheduler", scheduler]) == 0  # fmt: skip
    assert "Dice" in capsys.readouterr().out

    again = run(changed, sample, roi="test", scheduler=scheduler)
    assert again.tasks_done == 0

    whole = run(changed, sample, scheduler=scheduler, update=True)
    assert whole.tasks_done > 0
    labels = zarr.open_array(str(sample / "labels/nuclei_rf.v2/s0"))[...]
    # every voxel of the image rewritten: this run's ids only (continuing after ROI test's)
    assert len(np.unique(labels)) - 1 == whole.labels["nuclei_rf.v2"]
