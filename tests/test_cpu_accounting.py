"""Per-stage CPU accounting (engine/core/cpu.py): every stage of a run has its CPU time
by part in the result, its JSON form, the run record and `status IMAGE`."""

from __future__ import annotations

import json

import numpy as np
import pytest

from engine import Pipeline
from engine.cli.commands import main
from engine.core import cpu
from engine.runs.runner import run
from engine.state.records import list_runs
from tests.conftest import blobs, write_image


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory):
    path = tmp_path_factory.mktemp("cpu") / "img.zarr"
    return write_image(path, blobs((32, 96, 96), seed=3), (16, 48, 48), levels=1)


def pipeline() -> Pipeline:
    return (
        Pipeline()
        .add("smooth", "gaussian", "image", sigma=1.5)
        .add("mask", "threshold", "smooth", method="otsu")
        .add("nuclei", "label", "mask", {"kind": "label", "name": "nuclei"})
    )


def test_every_stage_has_its_cpu_by_part(image, scheduler, capsys):
    result = run(pipeline(), image, scheduler=scheduler)
    assert result.stages
    for stage in result.stages:
        assert set(stage.cpu) == set(cpu.PARTS), stage
        assert all(v >= 0 for v in stage.cpu.values()), stage
    smooth = [s for s in result.stages if s.name.startswith(("smooth", "mask"))]
    assert any(s.cpu["compute"] > 0 for s in smooth), smooth
    assert sum(s.cpu["decode"] for s in result.stages) > 0
    assert sum(s.cpu["encode"] for s in result.stages) > 0
    assert json.loads(json.dumps(result.to_json()))["stages"][0]["cpu"] == result.stages[0].cpu

    record = list_runs(image)[-1]
    for stage in result.stages:
        assert record["stages"][stage.name]["cpu"] == stage.cpu
    assert main(["status", str(image)]) == 0
    printed = capsys.readouterr().out
    assert "CPU" in printed and "compute" in printed and "decode" in printed


def test_stopwatch_charges_each_part_and_restores_the_one_before():
    cpu.start()
    cpu.switch(cpu.COMPUTE)
    before = cpu.switch(cpu.DECODE)
    assert before == cpu.COMPUTE
    np.sort(np.random.default_rng(0).random(2_000_000))  # some CPU while decoding
    assert cpu.switch(before) == cpu.DECODE
    spent = cpu.stop()
    assert spent[cpu.DECODE] > 0
    assert all(s >= 0 for s in spent)
    with cpu.charged(cpu.ENCODE):
        np.sort(np.random.default_rng(1).random(2_000_000))
    assert cpu.stop()[cpu.ENCODE] > spent[cpu.ENCODE]
