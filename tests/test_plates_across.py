"""Progress, `status`, `plan`, `--resume` and `--priority-roi` across a plate (an ngio
plate, 2 rows x 2 columns x 2 fields): one overall count, one line per unit and the
totals, every unit planned before any is written, a stopped plate run continued unit
by unit, the named units first."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
from pathlib import Path

import anndata
import pytest
from safety_runs import environment, executable, file_sums, slow_config, wait_for
from test_plates import _check_plate, _pipeline, ngio_plate

import engine
from engine.cli.commands import main
from engine.core.errors import EngineError
from engine.runs.progress import StageCounts
from engine.state.markers import read_records
from engine.state.records import list_runs

KEYS = [f"{r}/{c}/{f}" for r in "BC" for c in ("03", "05") for f in "01"]


def _labels(key: str) -> str:
    row, column, field = key.split("/")
    return f"{row}{column}/{field}"


def test_progress_is_one_count_across_the_plate(tmp_path: Path, scheduler: str) -> None:
    path, fields = ngio_plate(tmp_path, (1, 48, 64))
    counts = StageCounts()
    result = engine.run(_pipeline(), path, scheduler=scheduler, progress=counts)
    _check_plate(path, fields, result)
    # two counts, not one per stage per field: chunk tasks of every field, fields done
    snapshot = counts.snapshot()
    assert set(snapshot) == {"8 images", "units done"}, snapshot
    assert snapshot["units done"] == (8, 8)
    done, total = snapshot["8 images"]
    assert done == total == result.tasks_done > 8
    # how busy the workers were, measured from the scheduler's task stream
    busy = result.occupancy
    assert busy.tasks > 0 and busy.threads == 2
    assert 0 < busy.busy_fraction <= 1
    assert result.to_json()["workers"]["busy_fraction"] == round(busy.busy_fraction, 3)


def test_plan_on_a_plate_and_bad_input_in_one_field(
    tmp_path: Path, scheduler: str, capsys: pytest.CaptureFixture[str]
) -> None:
    path, _ = ngio_plate(tmp_path, (1, 48, 64))
    config = tmp_path / "p.yaml"
    config.write_text(_pipeline().to_yaml())
    assert main(["plan", str(config), "--input", str(path)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert [line.split(":")[0] for line in lines[:-1]] == [_labels(k) for k in KEYS]
    assert all(
        "chunk tasks in" in line and "projected worker memory" in line for line in lines[:-1]
    )
    assert lines[-1].startswith("total: 8 units (8 images), ")
    assert main(["plan", str(config), "--input", str(path), "--json", "--wells", "C05"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert [u["unit"] for u in data["units"]] == ["C05/0", "C05/1"]
    assert data["tasks"] == sum(u["tasks"] for u in data["units"]) > 0
    assert data["projected_worker_bytes"] == max(u["projected_worker_bytes"] for u in data["units"])

    # the last field is broken: plan and run refuse naming it, and no field is written
    shutil.rmtree(path / "C/05/1/0")
    assert main(["plan", str(config), "--input", str(path)]) == 2
    assert "C/05/1" in capsys.readouterr().err
    args = ["run", str(config), "--input", str(path), "--scheduler", scheduler, "--quiet"]
    assert main(args) == 2
    assert "C/05/1" in capsys.readouterr().err
    assert not any((path / k / "labels").exists() for k in KEYS)


def test_priority_roi_names_the_units_that_run_first(tmp_path: Path, scheduler: str) -> None:
    path, fields = ngio_plate(tmp_path, (1, 48, 64))
    with pytest.raises(EngineError, match="--resume: no image of .* has an interrupted or"):
        engine.run(_pipeline(), path, scheduler="tcp://127.0.0.1:9", resume=True)  # no cluster
    result = engine.run(_pipeline(), path, scheduler=scheduler, priority_roi="C05", parallel=1)
    assert [u.image.label for u, _ in result.results][:2] == ["C05/0", "C05/1"]
    records = {k: list_runs(path / k)[-1] for k in KEYS}
    first = max(records[k]["ended"] for k in ("C/05/0", "C/05/1"))
    assert all(r["started"] > first for k, r in records.items() if not k.startswith("C/05"))
    _check_plate(path, fields, result)


def _slow_plate(tmp_path: Path) -> tuple[Path, Path]:
    path, _ = ngio_plate(tmp_path, (1, 64, 64))  # 4 chunks per field
    return path, slow_config(tmp_path)


def _marked(field: Path, run_id: str) -> int:
    base = field / "_engine/runs" / run_id / "markers"
    return sum(len(read_records(p).positions) for p in base.glob("*") if p.is_dir())


def test_a_stopped_plate_run_resumes_every_unit_and_status_follows(
    tmp_path: Path, scheduler: str, capsys: pytest.CaptureFixture[str]
) -> None:
    reference_dir = tmp_path / "reference"
    reference_dir.mkdir()
    plate, config = _slow_plate(tmp_path)
    reference = shutil.copytree(plate, reference_dir / "plate.zarr")
    argv = ["run", str(config), "--quiet", "--scheduler", scheduler]
    assert main([*argv, "--input", str(reference)]) == 0
    summary = capsys.readouterr().out.splitlines()
    assert summary[-2].startswith("8 units in ") and summary[-1].startswith("  workers busy ")

    proc = subprocess.Popen(
        [executable(), "run", str(config), "--input", str(plate), "--workers", "2", "--quiet"],
        cwd=tmp_path, env=environment(0.4), start_new_session=True,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip

    def states() -> list[str]:
        return [(list_runs(plate / k) or [{}])[-1].get("state", "") for k in KEYS]

    try:
        wait_for(proc, lambda: states().count("completed") >= 2 and "running" in states())
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    err = proc.stderr.read()
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert "interrupted: run over 8 units can be continued with --resume" in err
    before = {k: list_runs(plate / k) for k in KEYS}
    latest = {k: runs[-1] if runs else {} for k, runs in before.items()}
    killed = [k for k in KEYS if latest[k].get("state") == "killed"]
    completed = [k for k in KEYS if latest[k].get("state") == "completed"]
    fresh = [k for k in KEYS if not before[k]]
    assert killed and len(completed) >= 2 and fresh, latest
    marked = {k: _marked(plate / k, latest[k]["run_id"]) for k in killed}

    # status on the plate: one line per field (state, chunk tasks), then the totals
    assert main(["status", str(plate)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    rows = {line.split()[0]: line for line in lines[:-1]}
    for key in KEYS:
        state = latest[key].get("state", "not started")
        assert state in rows[_labels(key)], rows
    tasks = latest[completed[0]]["tasks"]
    assert rows[_labels(completed[0])].split()[2] == f"{tasks}/{tasks}"
    assert lines[-1].startswith(f"total: 8 units ({len(completed)} completed")
    assert main(["status", str(plate), "--json", "--wells", "B03"]) == 0
    assert [u["unit"] for u in json.loads(capsys.readouterr().out)["units"]] == ["B03/0", "B03/1"]

    # --resume: completed fields are not run again, killed ones continue their run (their
    # marked chunks skipped), the others start; outputs as an uninterrupted run's
    assert main([*argv, "--input", str(plate), "--resume"]) == 0
    after = {k: list_runs(plate / k) for k in KEYS}
    for key in completed:
        assert after[key] == before[key]
    for key in killed:
        (run,) = after[key]
        assert run["run_id"] == latest[key]["run_id"] and run["state"] == "completed"
        assert len(run["attempts"]) == 1 and run["chunks_skipped"] == marked[key]
    for key in fresh:
        assert [r["state"] for r in after[key]] == ["completed"]
    for key in KEYS:
        got = file_sums(plate / key / "results/slow", metadata=False)
        assert got == file_sums(reference / key / "results/slow", metadata=False), key
    assert main(["status", str(plate)]) == 0
    total = f"{8 * tasks}/{8 * tasks}"
    assert capsys.readouterr().out.strip().splitlines()[-1] == (
        f"total: 8 units (8 completed); {total} chunk tasks"
    )
    # nothing left to continue: a second --resume reuses every field
    result = engine.run(engine.Pipeline.from_yaml(config), plate, scheduler=scheduler, resume=True)
    assert result.tasks_done == 0 and len(result.results) == 8


def test_versions_keep_across_the_plate(tmp_path: Path, scheduler: str) -> None:
    path, fields = ngio_plate(tmp_path, (1, 48, 64))
    data = _pipeline().to_dict()
    for step in data["steps"]:
        if step.get("output"):
            step["output"]["versions"] = "keep"
    first = engine.run(engine.Pipeline.build(data), path, scheduler=scheduler, wells=["B03"])
    assert set(first.plate_tables) == {"stats"}
    data["steps"][0]["params"]["sigma"] = 2.5  # another config: version 2 in every field
    second = engine.run(engine.Pipeline.build(data), path, scheduler=scheduler, wells=["B03"])
    for unit, one in second.results:
        assert set(one.outputs) == {"nuclei.v2", "stats.v2"}, unit.label
    assert set(second.plate_tables) == {"stats.v2"}
    v1 = anndata.read_zarr(str(path / "tables/stats"))
    v2 = anndata.read_zarr(str(path / "tables/stats.v2"))
    assert len(v1) == sum(first.labels.values())
    assert len(v2) == sum(second.labels.values()) != len(v1)
    # the same config again: every field's version 2 is reused, the plate table too
    third = engine.run(engine.Pipeline.build(data), path, scheduler=scheduler, wells=["B03"])
    assert third.tasks_done == 0 and set(third.plate_tables) == {"stats.v2"}
    assert len(anndata.read_zarr(str(path / "tables/stats.v2"))) == len(v2)


def test_an_interrupted_roi_table_run_resumes_roi_by_roi(tmp_path: Path, scheduler: str) -> None:
    from test_roi_table_units import FOVS, _ngio_image
    from test_roi_table_units import _pipeline as roi_pipeline

    path, _ = _ngio_image(tmp_path, FOVS)
    reference = shutil.copytree(path, tmp_path / "reference.zarr")
    whole = engine.run(roi_pipeline(), reference, roi_table="FOV_ROI_table", scheduler=scheduler)
    finished = {"units": 0}

    def stop_in_the_second_roi(label: str, total: int):
        """As a Ctrl-C would: once the first ROI is done, in the second's chunk tasks."""

        def advance(n: int) -> None:
            if label == "units done":
                finished["units"] += n
            elif finished["units"] >= 1:
                raise KeyboardInterrupt

        return advance

    with pytest.raises(KeyboardInterrupt):
        engine.run(
            roi_pipeline(), path, roi_table="FOV_ROI_table", scheduler=scheduler,
            progress=stop_in_the_second_roi,
        )  # fmt: skip
    states = [r["state"] for r in list_runs(path)]
    assert states == ["completed", "killed"], states
    result = engine.run(roi_pipeline(), path, roi_table="FOV_ROI_table", scheduler=scheduler,
                        resume=True)  # fmt: skip
    assert [r["state"] for r in list_runs(path)] == ["completed"] * 3
    assert result.results[0][1].reused and result.results[0][1].tasks_done == 0
    assert list_runs(path)[1]["attempts"]  # the killed run continued, not a new one
    # the same labels, ids and table (with each object's ROI) as the uninterrupted run
    assert file_sums(path / "labels/nuclei", metadata=False) == file_sums(
        reference / "labels/nuclei", metadata=False
    )
    got, want = (anndata.read_zarr(str(p / "tables/stats")) for p in (path, reference))
    assert list(got.obs_names) == list(want.obs_names)
    assert list(got.obs["roi"]) == list(want.obs["roi"])
    assert sum(one.labels.get("nuclei", 0) for _, one in whole.results) == len(want)


def test_submit_a_plate_in_a_thread(tmp_path: Path, scheduler: str) -> None:
    path, fields = ngio_plate(tmp_path, (1, 48, 64))
    handle = engine.submit(_pipeline(), path, scheduler=scheduler)
    assert set(handle.outputs) == {f"{_labels(k)} {n}" for k in KEYS for n in ("nuclei", "stats")}
    result = handle.wait(timeout=300)
    assert handle.status() == "done"
    _check_plate(path, fields, result)
    assert handle.progress()["units done"] == (8, 8)
    # a well of it, again: reused (same config and ROI)
    again = engine.submit(_pipeline(), path, scheduler=scheduler, wells=["C05"], update=True)
    assert again.outputs == {}  # nothing to write: both fields' outputs are reused
    done = again.wait(timeout=300)
    assert [u.image.label for u, _ in done.results] == ["C05/0", "C05/1"]
    assert done.tasks_done == 0


def _most_at_once(path: Path) -> int:
    """The most fields whose runs overlapped in time (from their run records)."""
    spans = [(r["started"], r["ended"]) for k in KEYS for r in list_runs(path / k)]
    return max(sum(a <= t < b for a, b in spans) for t, _ in spans)


def test_images_side_by_side_follow_the_cluster_size(tmp_path: Path, scheduler: str) -> None:
    from distributed import LocalCluster

    small, _ = ngio_plate(tmp_path / "small", (1, 48, 64))
    engine.run(_pipeline(), small, scheduler=scheduler)  # 2 worker threads: 2 at a time
    assert _most_at_once(small) <= 2
    big, fields = ngio_plate(tmp_path / "big", (1, 48, 64))
    with LocalCluster(n_workers=1, threads_per_worker=8, processes=False) as cluster:
        result = engine.run(_pipeline(), big, scheduler=cluster.scheduler_address)
    assert result.occupancy.threads == 8
    assert _most_at_once(big) >= 3  # 8 threads: 4 fields at a time
    _check_plate(big, fields, result)


def test_a_plate_on_the_warm_engine(tmp_path: Path, monkeypatch, capsys) -> None:
    """The default local run: the fields' runs reach the warm engine's TLS scheduler
    with its certificate (they failed with `TLS expects a ssl_context` before)."""
    from engine.execute import warm

    monkeypatch.setenv("NGFF_ENGINE_WARM_DIR", str(tmp_path / "engine"))
    monkeypatch.setenv("NGFF_ENGINE_WARM", "1")
    path, fields = ngio_plate(tmp_path, (1, 48, 64))
    config = tmp_path / "p.yaml"
    config.write_text(_pipeline().to_yaml())
    try:
        assert main(["run", str(config), "--input", str(path), "--wells", "B03"]) == 0
        assert warm.find().address.startswith("tls://")
    finally:
        warm.stop()
    assert "2 units in" in capsys.readouterr().out
    for key in ("B/03/0", "B/03/1"):
        assert (path / key / "labels/nuclei").exists()
