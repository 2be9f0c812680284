"""SLURM settings: the worker memory SLURM grants (memory / processes per job) refuses a
plan that cannot fit, with the numbers, before any chunk runs; `--resume` with nothing to
resume is refused at once; the cluster section and flags, and their mistakes."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from conftest import SLURM_SAMPLE, Cli, SampleImages
from slurm_jobs import CONFIG, OUTPUT, cli_process, spec

from engine import EngineError, Pipeline, submit
from engine.state.records import list_runs


@pytest.fixture
def image(sample_image: SampleImages, tmp_path: Path) -> Path:
    """A fresh copy of the SLURM tests' sample."""
    return sample_image(*SLURM_SAMPLE, copy_to=tmp_path / "sample.zarr")


def test_slurm_worker_memory_refuses_a_plan_that_cannot_fit(slurm, image, tmp_path):
    """Two workers in one 600 MiB job: each gets 300 MiB, less than the worker process and
    its chunk cache alone are projected to need."""
    proc = cli_process(
        "run", str(CONFIG), "--input", str(image), "--cluster", "slurm", "--partition", slurm,
        "--jobs", "1", "--cores", "2", "--processes", "2", "--memory", "600MiB",
        "--shared-dir", str(tmp_path / "shared"), "--quiet", cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    err = " ".join(proc.stderr.split())
    assert "Traceback" not in err
    assert "step '" in err and "with 1 thread(s)" in err, err
    assert "more than the worker memory limit 300.0 MiB" in err, err
    assert not (image / OUTPUT).exists()
    (record,) = list_runs(image)
    assert record["state"] == "failed" and record["chunks_done"] == 0
    assert not (image / "_engine/runs" / record["run_id"] / "markers").exists()


# --- configuration (no jobs) ----------------------------------------------------------------


def test_submit_resume_with_nothing_to_resume_is_refused_at_once(image, tmp_path):
    # refused before anything is submitted or started, in a batch job or in a thread
    for batch in (True, False):
        with pytest.raises(EngineError, match="resume=True: no interrupted or failed run"):
            submit(CONFIG, input=image, cluster=spec(tmp_path, jobs=1), batch=batch, resume=True)
    with pytest.raises(EngineError, match="resume=True continues a run with its own"):
        submit(CONFIG, input=image, batch=True, resume=True, overwrite=True)
    assert not (image / OUTPUT).exists() and not (tmp_path / "shared").exists()


def test_cluster_section_and_flags(tmp_path, cli: Cli):
    from engine.execute.placement import resolve_cluster

    yaml_spec = {"kind": "slurm", "queue": "batch", "jobs": 3, "memory": "4GiB"}
    pipeline = Pipeline.build({**Pipeline.from_yaml(CONFIG).to_dict(), "cluster": yaml_spec})
    assert Pipeline.build(pipeline.to_dict()) == pipeline  # round-trips
    assert pipeline.cluster.partition == "batch"
    flags = resolve_cluster(pipeline.cluster, {"min_jobs": 1, "max_jobs": 4, "cores": 2})
    assert (flags.jobs, flags.min_jobs, flags.max_jobs, flags.cores) == (None, 1, 4, 2)
    assert flags.memory == "4GiB" and flags.adaptive
    adaptive = resolve_cluster(None, {"kind": "slurm", "max_jobs": 4, "lifetime": "50m"})
    fixed = resolve_cluster(adaptive, {"jobs": 2})  # --jobs: the config's lifetime goes too
    assert (fixed.jobs, fixed.max_jobs, fixed.lifetime) == (2, None, None)
    assert resolve_cluster(pipeline.cluster, "local").kind == "local"

    config = tmp_path / "c.yaml"
    for cluster, flags, message in [
        ({"memory": "lots"}, [], "cluster.memory: 'lots' is not a memory size"),
        ({"jobs": 2, "max_jobs": 3}, [], "give either jobs (fixed size) or min_jobs/max_jobs"),
        ({"processes": 4}, [], "processes (4) cannot exceed cores (1)"),
        ({}, ["--jobs", "2"], "--jobs: SLURM options need --cluster slurm"),
        ({}, ["--cluster", "slurm", "--walltime", "soon"], "'soon' is not a SLURM time"),
        ({"kind": "slurm"}, ["--workers", "2"], "--workers is for --cluster local"),
        ({"jobs": 2, "lifetime": "50m"}, ["--cluster", "slurm"], "lifetime needs adaptive mode"),
        (
            {"max_jobs": 2, "walltime": "01:00:00"},
            ["--cluster", "slurm", "--lifetime", "2h"],
            "lifetime (2h) must be shorter than walltime (01:00:00)",
        ),
        ({"max_jobs": 2}, ["--cluster", "slurm", "--lifetime", "soon"], "'soon' is not a duration"),
    ]:
        config.write_text(CONFIG.read_text() + yaml.safe_dump({"cluster": cluster}))
        args = ["run", str(config), "--input", str(tmp_path / "none.zarr"), *flags]
        ran = cli(args)
        assert ran.code == 2
        err = ran.err
        assert message in " ".join(err.split()), err
