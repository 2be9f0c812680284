"""Dask workers in SLURM jobs (dask-jobqueue's SLURMCluster) from a driver, on the real
one-node SLURM of slurm/dev-cluster.sh (no mocks, no skips):

- `run --cluster slurm`: workers over TLS give output byte-identical to a local run of
  the standard pipeline;
- SLURM's own error text for a bad partition or a rejected or dead job, and a clear
  error when sbatch is missing;
- worker jobs get the engine's worker settings;
- TLS: a client without the run's certificate cannot run a task on the scheduler;
- a worker job scancelled mid-run: the run completes with identical output.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import ssl
import sys
import time
from pathlib import Path

import pytest
from conftest import SLURM_SAMPLE, SampleImages, pythonpath_with_tests
from slurm_jobs import (
    CONFIG,
    OUTPUT,
    assert_same_output,
    cli_process,
    queued,
    sh,
    slow_pipeline,
    spec,
    wait_gone,
    wait_gone_id,
)

from engine import EngineError, Pipeline, run, submit
from engine.core.pipeline import ClusterSpec


@pytest.fixture
def image(sample_image: SampleImages, tmp_path: Path) -> Path:
    """A fresh copy of the SLURM tests' sample."""
    return sample_image(*SLURM_SAMPLE, copy_to=tmp_path / "sample.zarr")


def test_cli_run_cluster_slurm_equals_local(slurm, slurm_reference, image, tmp_path):
    shared = tmp_path / "shared"
    started = time.perf_counter()
    proc = cli_process(
        "run", str(CONFIG), "--input", str(image), "--cluster", "slurm", "--partition", slurm,
        "--jobs", "2", "--memory", "1GiB", "--walltime", "00:10:00", "--shared-dir", str(shared),
        "--json", cwd=tmp_path,
    )  # fmt: skip
    seconds = time.perf_counter() - started
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    print(f"--cluster slurm --jobs 2: {seconds:.1f} s in all, run {result['seconds']:.1f} s")
    assert result["objects"]["nuclei"] > 10
    assert_same_output(image, slurm_reference)
    # the worker jobs are cancelled, their logs kept, the run's certificate removed
    logs = list((shared / "logs").glob("ngff-engine-*.err"))
    assert len(logs) == 2
    for log in logs:
        assert "tls://" in log.read_text()
        wait_gone_id(log.stem.rsplit("-", 1)[1])
    assert list((shared / "runs").iterdir()) == []


def test_bad_partition_reports_slurm_message(slurm, image, tmp_path):
    proc = cli_process(
        "run", str(CONFIG), "--input", str(image), "--cluster", "slurm", "--partition", "nope",
        "--shared-dir", str(tmp_path / "shared"), "--quiet", cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    err = proc.stderr.strip()
    assert "sbatch: error: invalid partition specified: nope" in err
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    assert not (image / OUTPUT).exists()
    # the same from Python, and for a batch job
    with pytest.raises(EngineError, match="invalid partition specified: nope"):
        run(Pipeline.from_yaml(CONFIG), input=image, cluster=spec(tmp_path, partition="nope"))
    with pytest.raises(EngineError, match="SLURM refused the batch job: .*invalid partition"):
        submit(CONFIG, input=image, cluster=spec(tmp_path, partition="nope"), batch=True)


def test_job_rejected_or_dead_reports_slurm_message(slurm, image, tmp_path):
    with pytest.raises(EngineError, match="SLURM refused .*Requested node configuration"):
        run(Pipeline.from_yaml(CONFIG), input=image, cluster=spec(tmp_path, memory="100TiB"))
    # a worker job that starts and dies: the end of its log
    broken = spec(tmp_path, python="/nonexistent/python")
    with pytest.raises(EngineError, match=r"ended before .*/nonexistent/python: No such file"):
        run(Pipeline.from_yaml(CONFIG), input=image, cluster=broken)
    wait_gone(broken["job_name"])
    assert not (image / OUTPUT).exists()


def test_missing_sbatch_is_one_clear_error(slurm, image, tmp_path):
    # Only the venv's bin on PATH: no sbatch, squeue, scancel.
    env = {**os.environ, "PATH": str(Path(sys.executable).parent)}
    assert shutil.which("sbatch", path=env["PATH"]) is None
    for command in (["run", "--cluster", "slurm", "--quiet"], ["submit"]):
        proc = cli_process(
            command[0], str(CONFIG), "--input", str(image), *command[1:],
            "--shared-dir", str(tmp_path / "shared"), cwd=tmp_path, env=env,
        )  # fmt: skip
        assert proc.returncode == 2, proc.stderr
        err = proc.stderr.strip()
        assert "sbatch" in err and "not found on PATH" in err, err
        assert "Traceback" not in err and len(err.splitlines()) == 1, err
    assert not (image / OUTPUT).exists()


def test_slurm_workers_get_the_heap_pad_and_no_profiler(slurm, tmp_path):
    """Worker jobs get the engine's worker settings through the job script's environment
    (engine/execute/cluster.py: worker_config)."""
    from engine.core.worker_env import HEAP_ENVIRONMENT
    from engine.execute.slurm import slurm_client

    names = list(HEAP_ENVIRONMENT)

    def settings() -> tuple[dict[str, str | None], bool, str | None]:
        import dask

        profile = dask.config.get("distributed.worker.profile.enabled")
        heap = {name: os.environ.get(name) for name in names}
        return heap, profile, os.environ.get("SLURM_JOB_ID")

    with slurm_client(ClusterSpec.model_validate(spec(tmp_path, jobs=1))) as client:
        heap, profile, job = client.submit(settings, pure=False).result(timeout=60)
    assert (heap, profile) == (HEAP_ENVIRONMENT, False) and job


def test_tls_refuses_a_client_without_the_certificate(slurm, tmp_path):
    from distributed import Client
    from distributed.comm import connect
    from distributed.security import Security

    from engine.execute.slurm import slurm_client

    marker = tmp_path / "intruder-ran"
    cluster = ClusterSpec.model_validate(spec(tmp_path, jobs=1))
    with slurm_client(cluster) as client:
        address = client.scheduler.address
        assert address.startswith("tls://")
        assert client.submit(os.getpid).result(timeout=30) != os.getpid()  # the owner can
        tls_dirs = list((tmp_path / "shared" / "runs").iterdir())
        assert len(tls_dirs) == 1 and tls_dirs[0].stat().st_mode & 0o077 == 0

        def intrude(security=None):
            with Client(address, timeout=5, security=security) as c:
                c.submit(marker.touch).result(timeout=10)

        with pytest.raises(TypeError, match="TLS"):  # no certificate: dask will not even try
            intrude()
        with pytest.raises(OSError, match="certificate"):  # a certificate of its own
            intrude(Security.temporary())

        async def raw(ctx: ssl.SSLContext | None, scheme: str) -> None:
            # A TLS client that skips verification and has no certificate, or plain TCP.
            kwargs = {"ssl_context": ctx} if ctx else {}
            comm = await connect(address.replace("tls://", scheme), timeout=5, **kwargs)
            try:
                await comm.write({"op": "identity"})
                await comm.read()
            finally:
                comm.abort()

        bare = ssl.create_default_context()
        bare.check_hostname = False
        bare.verify_mode = ssl.CERT_NONE
        # the server ends the handshake: an alert, or (timing) just the connection
        with pytest.raises(OSError, match="(?i)certificate.required|EOF occurred|reset by peer"):
            asyncio.run(raw(bare, "tls://"))
        with pytest.raises(OSError):
            asyncio.run(raw(None, "tcp://"))
        assert client.submit(sum, [1, 2]).result(timeout=30) == 3  # still serving its owner
    assert not marker.exists()
    assert list((tmp_path / "shared" / "runs").iterdir()) == []


def in_flight(trace: Path, job: str) -> set[str]:
    """Calls of `slow_identity` in SLURM job `job` that started and have not ended."""
    started = {p.stem for p in trace.glob(f"{job}-*.start")}
    return started - {p.stem for p in trace.glob(f"{job}-*.end")}


def test_scancel_one_worker_job_mid_run(slurm, slurm_reference, image, tmp_path, monkeypatch):
    """Two worker jobs; one is scancelled after the first batches: the run completes on
    the other, output identical to the local run of the standard pipeline."""
    monkeypatch.setenv("PYTHONPATH", pythonpath_with_tests())
    trace = tmp_path / "trace"
    trace.mkdir()
    pipeline = Pipeline.build(slow_pipeline(trace, 0.4))
    cluster = spec(tmp_path, jobs=2)
    cancelled: list[tuple[str, str]] = []
    seen: list[str] = []

    def progress(stage: str, total: int):
        seen.append(stage)

        def advance(n: int) -> None:
            if cancelled:
                return
            # after the first batch of the first stage, a job computing a call right now
            jobs = queued(cluster["job_name"])
            assert len(jobs) == 2
            busy = [job for job in jobs if in_flight(trace, job)]
            if busy:
                assert sh(["scancel", busy[0]]).returncode == 0
                cancelled.append((busy[0], stage))

        return advance

    started = time.perf_counter()
    result = run(pipeline, input=image, cluster=cluster, progress=progress)
    print(f"run with one of 2 worker jobs scancelled: {time.perf_counter() - started:.1f} s")
    assert cancelled and cancelled[0][1] == seen[0] == result.stages[0].name
    assert len(seen) == len([s for s in result.stages if s.tasks]) > 3
    # the cancelled job was computing: a call started there never ended (dask redid it)
    job = cancelled[0][0]
    assert in_flight(trace, job), f"job {job}: no call was interrupted"
    assert_same_output(image, slurm_reference)
    wait_gone(cluster["job_name"])
