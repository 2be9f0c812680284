"""Versions of results and reuse: a changed config with `versions: keep` writes a new
version beside the old ones; an unchanged step reuses its stored output (an unchanged
pipeline computes nothing); only what changed runs; an output left half written by a
failed run is never reused; `--overwrite` computes again; `info` lists versions and
`diff` compares them."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
import zarr
from test_evaluate import assert_same, labels_of, nuclei_pipeline, oracle, read_eval

from engine import Pipeline, run
from engine.cli.commands import main
from engine.core.errors import OutputConflict
from engine.execute.executor import TaskFailed
from engine.io.sample_zarr import write_sample
from engine.runs.planning import make_plan
from engine.state.records import read_record

ROI = {"z": (1, 15), "y": (5, 90), "x": (3, 77)}
WINDOW = (slice(1, 15), slice(5, 90), slice(3, 77))


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("pristine") / "s.zarr"
    return Path(write_sample(path, (16, 96, 96), (8, 32, 32), "0.4"))


@pytest.fixture
def image(pristine: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(pristine, tmp_path / "s.zarr"))


def tree_hash(root: Path, skip: str = "_engine") -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and not p.relative_to(root).as_posix().startswith(skip)
    }


def attrs(image: Path, path: str) -> dict:
    return zarr.open_group(str(image / path), mode="r").attrs.asdict()["ngff_engine"]


def test_unchanged_pipeline_computes_nothing(image, scheduler, tmp_path, capsys, monkeypatch):
    p = nuclei_pipeline()
    first = run(p, input=image, roi=ROI, scheduler=scheduler)
    assert first.tasks_done > 0 and first.reused == []
    before = tree_hash(image)

    again = run(p, input=image, roi=ROI, scheduler=scheduler)
    assert again.tasks_done == 0 and again.stages == []
    assert sorted(again.reused) == ["nuclei", "nuclei_eval"]
    assert again.evaluations == first.evaluations  # read back from the stored table
    assert tree_hash(image) == before
    record = read_record(str(image), again.run_id)
    assert record["state"] == "completed" and record["tasks"] == record["chunks_done"] == 0
    assert record["outputs"] == [] and sorted(record["reused"]) == [
        "labels/nuclei",
        "tables/nuclei_eval",
    ]

    # the image by a relative path: the same image, the same config
    monkeypatch.chdir(image.parent)
    relative = run(p, input=image.name, roi=ROI, scheduler=scheduler)
    assert relative.tasks_done == 0 and len(relative.reused) == 2

    # the same through YAML and the CLI: zero tasks, scores printed
    config = tmp_path / "p.yaml"
    config.write_text(p.to_yaml())
    argv = ["run", str(config), "--input", str(image), "--scheduler", scheduler, "--quiet"]
    assert main([*argv, "--roi", "1:15,5:90,3:77"]) == 0
    printed = capsys.readouterr().out
    assert "0 chunk tasks" in printed and "(reused" in printed and "Dice 0.9" in printed
    assert main([*argv, "--roi", "1:15,5:90,3:77", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["tasks_done"] == 0 and data["evaluations"]["nuclei_eval"]["true_positives"] > 10

    # --overwrite computes again, to the same result
    forced = run(p, input=image, roi=ROI, scheduler=scheduler, overwrite=True)
    assert forced.tasks_done == first.tasks_done and forced.reused == []
    assert forced.evaluations == first.evaluations


def test_changed_config_writes_a_new_version(image, scheduler, capsys):
    keep = {"versions": "keep"}
    v1 = run(nuclei_pipeline(1.0, **keep), input=image, roi=ROI, scheduler=scheduler)
    first = tree_hash(image / "labels" / "nuclei")
    v2 = run(nuclei_pipeline(2.0, **keep), input=image, roi=ROI, scheduler=scheduler)
    assert set(v2.outputs) == {"nuclei.v2", "nuclei_eval.v2"} and v2.reused == []
    assert tree_hash(image / "labels" / "nuclei") == first  # v1 as it was
    listed = zarr.open_group(str(image / "labels"), mode="r").attrs.asdict()["labels"]
    assert listed == ["truth", "annotations", "nuclei", "nuclei.v2"]
    assert zarr.open_group(str(image / "tables"), mode="r").attrs["tables"][-2:] == [
        "nuclei_eval",
        "nuclei_eval.v2",
    ]
    assert attrs(image, "labels/nuclei")["version"] == {
        "of": "nuclei",
        "number": 1,
        "previous": None,
        "changed": None,
    }
    version = attrs(image, "labels/nuclei.v2")["version"]
    assert (version["of"], version["number"], version["previous"]) == ("nuclei", 2, "nuclei")
    assert version["changed"] == "chain[smooth].params.sigma: 1.0 -> 2.0"
    assert attrs(image, "tables/nuclei_eval.v2")["provenance"]["labels"] == "labels/nuclei.v2"
    want = oracle(labels_of(image, "nuclei.v2")[WINDOW], labels_of(image, "truth")[WINDOW])
    assert_same(v2.evaluations["nuclei_eval.v2"], want)
    assert v1.evaluations["nuclei_eval"] != v2.evaluations["nuclei_eval.v2"]

    # back to sigma 1: version 1 is reused; sigma 3 is version 3, after version 2
    back = run(nuclei_pipeline(1.0, **keep), input=image, roi=ROI, scheduler=scheduler)
    assert back.tasks_done == 0 and set(back.reused) == {"nuclei", "nuclei_eval"}
    run(nuclei_pipeline(3.0, **keep), input=image, roi=ROI, scheduler=scheduler)
    assert attrs(image, "labels/nuclei.v3")["version"]["previous"] == "nuclei.v2"

    assert main(["info", str(image), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    (labels,) = [g for g in info["versions"] if g["output"] == "labels/nuclei"]
    assert [(v["name"], v["number"]) for v in labels["versions"]] == [
        ("nuclei", 1),
        ("nuclei.v2", 2),
        ("nuclei.v3", 3),
    ]
    assert labels["versions"][2]["changed"] == "chain[smooth].params.sigma: 2.0 -> 3.0"
    assert main(["info", str(image)]) == 0
    text = capsys.readouterr().out
    assert "versions of labels/nuclei:" in text and "v2 nuclei.v2 (from nuclei: chain" in text

    # diff: version 2 scored against version 1, as on whole arrays
    argv = ["diff", str(image), "nuclei.v2", "nuclei", "--scheduler", scheduler, "--json"]
    assert main(argv) == 0
    found = json.loads(capsys.readouterr().out)
    want = oracle(labels_of(image, "nuclei.v2"), labels_of(image, "nuclei"))
    assert found["reference"] == "labels/nuclei" and found["dice"] == want.dice
    assert found["true_positives"] == want.true_positives > 10
    assert main(argv[:-1] + ["--roi", "2:9,0:50,10:60"]) == 0
    assert "labels/nuclei.v2 against labels/nuclei: Dice" in capsys.readouterr().out


def test_only_the_changed_downstream_step_runs(image, scheduler):
    p = nuclei_pipeline(versions="keep")
    run(p, input=image, roi=ROI, scheduler=scheduler)
    more = p.add("stats", "measure", "nuclei", {"kind": "table", "name": "stats"})
    _, plan = make_plan(more, image, ROI)
    assert [s.name for s in plan.stages] == ["stats/measure"]
    assert plan.stage("stats/measure").labels.path == "labels/nuclei/s0"  # the stored output
    assert sorted(o.path for o in plan.reused) == ["labels/nuclei", "tables/nuclei_eval"]
    result = run(more, input=image, roi=ROI, scheduler=scheduler)
    assert result.tasks_done == len(plan.stage("stats/measure").tasks)
    ids = np.unique(labels_of(image, "nuclei")[WINDOW])
    assert read_eval(image, "stats").n_obs == len(ids) - 1

    # another reference: a new version of the evaluation only, against the stored labels
    data = more.model_dump()
    data["steps"][3]["params"] = {"reference": "annotations"}
    other = Pipeline.build(data)
    _, plan = make_plan(other, image, ROI)
    assert [s.name for s in plan.stages] == ["eval/evaluate"]
    result = run(other, input=image, roi=ROI, scheduler=scheduler)
    assert set(result.reused) == {"nuclei", "stats"}
    version = attrs(image, "tables/nuclei_eval.v2")["version"]
    assert version["changed"] == "chain[eval].params.reference: 'truth' -> 'annotations'; " + (
        "reference: 'labels/truth' -> 'labels/annotations'"
    )


BAD = 65535


def failing(unless: Path, **output: str) -> Pipeline:
    """The identity, failing on the chunk holding BAD until the file `unless` exists."""
    params = {"function": "user_ops:fail_on_value", "kwargs": {"value": BAD, "unless": str(unless)}}
    step = {"name": "custom", "op": "function", "params": params}
    return Pipeline.build(
        {"steps": [{**step, "output": {"kind": "image", "name": "custom", **output}}]}
    )


def bad_image(path: Path) -> Path:
    image = Path(write_sample(path, (8, 64, 64), (4, 32, 32), "0.5"))
    zarr.open_array(str(image / "s0"), mode="r+")[5, 40, 40] = BAD  # in z 4..8 only
    return image


def test_output_of_a_failed_run_is_not_reused(tmp_path, scheduler):
    image = bad_image(tmp_path / "image.zarr")
    p = failing(tmp_path / "fixed")
    top = {"z": (0, 4)}
    first = run(p, input=image, roi=top, scheduler=scheduler)
    _, plan = make_plan(p, image, top)
    assert [o.path for o in plan.reused] == ["results/custom"]
    with pytest.raises(TaskFailed):  # z 0..8 overlaps the first ROI; chunks in z 4..8 fail
        run(p, input=image, roi={"z": (0, 8)}, scheduler=scheduler, update=True)
    # the stored attributes still describe the first run, but the run records know better
    assert attrs(image, "results/custom")["runs"][-1]["roi"]["stop"][0] == 4
    _, plan = make_plan(p, image, top)
    assert plan.reused == () and [o.path for o in plan.outputs] == ["results/custom"]
    with pytest.raises(OutputConflict, match="same config"):
        run(p, input=image, roi=top, scheduler=scheduler)
    result = run(p, input=image, roi=top, scheduler=scheduler, update=True)
    assert result.tasks_done == first.tasks_done > 0 and result.reused == []
    _, plan = make_plan(p, image, top)  # finished now: reusable again
    assert [o.path for o in plan.reused] == ["results/custom"]
    source = zarr.open_array(str(image / "s0"))[0:4]
    np.testing.assert_array_equal(zarr.open_array(str(image / "results/custom/s0"))[0:4], source)


def test_yaml_round_trip_of_versions(tmp_path):
    text = yaml.safe_dump({"steps": nuclei_pipeline(versions="keep").to_dict()["steps"]})
    assert "versions: keep" in text
    config = tmp_path / "p.yaml"
    config.write_text(text)
    assert Pipeline.from_yaml(config).steps == nuclei_pipeline(versions="keep").steps


def test_a_failed_version_is_completed_not_replaced_by_a_new_one(tmp_path, scheduler):
    image = bad_image(tmp_path / "image.zarr")
    (tmp_path / "fixed").touch()
    run(failing(tmp_path / "fixed", versions="keep"), input=image, scheduler=scheduler)
    second = failing(tmp_path / "fixed2", versions="keep")  # another config: version 2
    with pytest.raises(TaskFailed) as failed:
        run(second, input=image, scheduler=scheduler)
    assert (image / "results" / "custom.v2").exists()
    _, plan = make_plan(second, image)
    assert [o.name for o in plan.outputs] == ["custom.v2"]  # not custom.v3
    (tmp_path / "fixed2").touch()
    done = run(second, input=image, scheduler=scheduler, resume=True)
    assert list(done.outputs) == ["custom.v2"] and failed.value.stage == "custom"
    version = attrs(image, "results/custom.v2")["version"]
    assert version["previous"] == "custom" and "fixed2" in version["changed"]
    assert sorted(p.name for p in (image / "results").iterdir() if p.is_dir()) == [
        "custom",
        "custom.v2",
    ]
    np.testing.assert_array_equal(
        zarr.open_array(str(image / "results/custom.v2/s0"))[...],
        zarr.open_array(str(image / "s0"))[...],
    )
