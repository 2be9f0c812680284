"""The whole run as one SLURM batch job, on the real one-node SLURM of slurm/dev-cluster.sh:

- `submit --wait`, `submit(..., batch=True).wait()`: output identical to a local run;
- a run that fails in its job, a job cancelled while pending;
- `submit(...)` in a thread with adaptive SLURM workers;
- a batch job cancelled mid-run (driver, scheduler and workers gone, as at a walltime),
  submitted again with `--resume --wait`: output identical, marked chunks skipped; while
  the first job ran, `status IMAGE` showed the run and its chunks done from the run record.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
from conftest import SLURM_SAMPLE, SampleImages, pythonpath_with_tests
from slurm_jobs import (
    CONFIG,
    OUTPUT,
    assert_same_output,
    cli_process,
    sh,
    slow_pipeline,
    spec,
    wait_gone_id,
)

from engine import EngineError, Pipeline, submit
from engine.state.markers import read_records
from engine.state.records import read_record


@pytest.fixture
def image(sample_image: SampleImages, tmp_path: Path) -> Path:
    """A fresh copy of the SLURM tests' sample."""
    return sample_image(*SLURM_SAMPLE, copy_to=tmp_path / "sample.zarr")


def test_cli_submit_wait_equals_local(slurm, slurm_reference, image, tmp_path):
    # SLURM settings from the config's cluster: section, the size from a flag
    shared = tmp_path / "shared"
    config = tmp_path / "nuclei.yaml"
    cluster = {"partition": slurm, "memory": "1GiB", "shared_directory": str(shared)}
    config.write_text(CONFIG.read_text() + yaml.safe_dump({"cluster": cluster}))
    base = ["--input", str(image), "--jobs", "2"]
    dry = cli_process("submit", str(config), *base, "--dry-run", cwd=tmp_path)
    assert dry.returncode == 0, dry.stderr
    assert "#SBATCH --ntasks=4" in dry.stdout and "#SBATCH --partition=debug" in dry.stdout
    assert "-m engine.runs.batch" in dry.stdout and "{{" not in dry.stdout
    assert not shared.exists() and not (image / OUTPUT).exists()  # nothing submitted

    started = time.perf_counter()
    proc = cli_process("submit", str(config), *base, "--wait", cwd=tmp_path)
    print(f"submit --wait: {time.perf_counter() - started:.1f} s")
    assert proc.returncode == 0, proc.stderr
    assert "submitted batch job" in proc.stdout and "objects" in proc.stdout
    job_id = proc.stdout.split("submitted batch job")[1].split()[0]
    log = shared / "logs" / f"ngff-engine-{job_id}.out"
    assert f"log: {log}" in proc.stdout.replace("\n    ", "")
    assert "tls://" in log.read_text() and "exit state 0" in log.read_text()
    assert_same_output(image, slurm_reference)

    status = cli_process("status", job_id, "--shared-dir", str(shared), "--json", cwd=tmp_path)
    assert status.returncode == 0, status.stderr
    info = json.loads(status.stdout)
    assert info["state"] == "done" and info["job_id"] == job_id
    assert all(done == total for done, total in info["progress"].values())
    run_dir = Path(info["run"])
    assert run_dir.stat().st_mode & 0o077 == 0 and not (run_dir / "tls-key.pem").exists()


def test_python_submit_batch_wait_equals_local(slurm, slurm_reference, image, tmp_path):
    handle = submit(
        Pipeline.from_yaml(CONFIG), input=image, cluster=spec(tmp_path, jobs=1), batch=True
    )
    assert handle.status() in ("pending", "running")  # returned at once
    assert handle.outputs == {"nuclei": str(image / OUTPUT)}
    result = handle.wait(timeout=120)
    assert handle.status() == "done" and handle.exit_code == 0
    assert result.labels["nuclei"] > 10 and result.outputs == handle.outputs
    assert_same_output(image, slurm_reference)


def test_python_submit_batch_failure_and_cancel(slurm, sample_image, tmp_path, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", pythonpath_with_tests())  # sbatch passes it on to the job
    images = [tmp_path / "a.zarr", tmp_path / "b.zarr"]
    for path in images:
        sample_image(*SLURM_SAMPLE, copy_to=path)
    # A run that fails inside the job: wait() raises with the driver's message.
    bad = Pipeline().add(
        "boom", "function", function="user.functions:explode",
        output={"kind": "image", "name": "boom"},
    )  # fmt: skip
    failing = submit(bad, input=images[0], cluster=spec(tmp_path, jobs=1), batch=True)
    pending = submit(CONFIG, input=images[1], cluster=spec(tmp_path, jobs=1), batch=True)
    pending.cancel()
    with pytest.raises(EngineError, match="cancelled"):
        pending.wait(timeout=60)
    assert pending.status() == "cancelled"
    with pytest.raises(EngineError, match=r"failed: step 'boom'.*user function cannot handle"):
        failing.wait(timeout=120)
    assert failing.status() == "failed" and failing.exit_code == 2


def test_python_submit_thread_with_adaptive_slurm_workers(slurm, slurm_reference, image, tmp_path):
    # adaptive from zero jobs: dask-jobqueue submits worker jobs when tasks wait
    handle = submit(CONFIG, input=image, cluster=spec(tmp_path, min_jobs=0, max_jobs=2))
    assert handle.status() == "running"
    result = handle.wait(timeout=120)
    assert handle.status() == "done"
    assert set(handle.progress()) == {s.name for s in result.stages if s.tasks}
    assert_same_output(image, slurm_reference)
    assert len(list((tmp_path / "shared" / "logs").glob("*.err"))) >= 1


SLOW_STAGE = "mask/reduce-0"  # calls slow_identity once per chunk: 8 chunks


def image_status(image: Path, cwd: Path) -> list[dict]:
    proc = cli_process("status", str(image), "--json", cwd=cwd)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)["runs"]


def poll_status(image: Path, cwd: Path, accept: Callable[[dict], bool], timeout=90.0) -> dict:
    """The latest run record as `ngff-engine status IMAGE --json` shows it, once accepted."""
    deadline = time.monotonic() + timeout
    while True:
        runs = image_status(image, cwd)
        if runs and accept(runs[-1]):
            return runs[-1]
        assert not runs or runs[-1]["state"] != "completed", "the run ended before it was seen"
        assert time.monotonic() < deadline, f"status never showed what was awaited: {runs}"
        time.sleep(0.2)


def marked_chunks(image: Path, run_id: str, stage: str) -> int:
    """Chunks a stage marked done (the records of its marker folder)."""
    folder = image / "_engine/runs" / run_id / "markers" / stage.replace("/", ".")
    return len(read_records(folder).positions)


def test_killed_batch_run_resumes_and_status_follows_it(
    slurm, slurm_reference, image, tmp_path, monkeypatch
):
    monkeypatch.setenv("PYTHONPATH", pythonpath_with_tests())  # sbatch passes it on to the job
    trace = tmp_path / "trace"
    trace.mkdir()
    config = tmp_path / "slow.yaml"
    cluster = spec(tmp_path, jobs=2)
    config.write_text(yaml.safe_dump({**slow_pipeline(trace, 1.5), "cluster": cluster}))
    submit = ["submit", str(config), "--input", str(image)]
    proc = cli_process(*submit, "--json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    job = json.loads(proc.stdout)["job_id"]
    submitted = time.monotonic()

    # while the job runs, `status IMAGE` shows its run, the stage running and its chunks done
    def slow_stage_running(run: dict) -> bool:
        row = run.get("stages", {}).get(SLOW_STAGE, {})
        return run["state"] == "running" and row.get("running") and row["done"] > 0

    seen = poll_status(image, tmp_path, slow_stage_running)
    assert seen["stages"][SLOW_STAGE]["tasks"] == 8 and seen["chunks_done"] > 0
    after = time.monotonic() - submitted
    print(f"status showed {seen['chunks_done']} chunks done {after:.1f} s after submit")

    assert sh(["scancel", job]).returncode == 0
    wait_gone_id(job)
    run_id = seen["run_id"]
    killed = poll_status(image, tmp_path, lambda r: r["state"] == "killed", timeout=30)
    assert killed["run_id"] == run_id
    marked = marked_chunks(image, run_id, SLOW_STAGE)
    assert marked > 0 and not (image / OUTPUT / "s1").exists()  # mid-run

    started = time.monotonic()
    proc = cli_process(*submit, "--resume", "--wait", "--json", cwd=tmp_path, timeout=240)
    assert proc.returncode == 0, proc.stderr + proc.stdout
    result = json.loads(proc.stdout)
    print(f"resumed batch run: {time.monotonic() - started:.1f} s")
    assert result["run_id"] == run_id
    assert_same_output(image, slurm_reference)

    record = read_record(str(image), run_id)
    assert record["state"] == "completed" and len(record["attempts"]) == 1
    assert record["chunks_skipped"] >= marked > 0
    assert record["stages"][SLOW_STAGE]["skipped"] == marked
    assert all(r["done"] + r["skipped"] == r["tasks"] for r in record["stages"].values())
    # chunks computed twice: those in flight when the job was cancelled, one per worker
    first = len(list(trace.glob(f"{job}-*.start")))
    redone = len(list(trace.glob("*.start"))) - 8
    print(f"first job: {first} calls started, {marked} chunks marked; redone on resume: {redone}")
    assert 0 <= redone <= 2
