"""The one-node SLURM dev cluster (slurm/dev-cluster.sh) runs real jobs.

No mocks: the fixture starts (or finds running) the real cluster, then jobs go
through srun, sbatch and dask-jobqueue's SLURMCluster. Needs root (the script
installs slurm and munge with apt-get the first time).
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time

import pytest
from conftest import REPO

SCRIPT = REPO / "slurm" / "dev-cluster.sh"


def run(cmd: list[str], timeout: float = 60, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kw)


def queued_job_ids() -> set[str]:
    out = run(["squeue", "-h", "-o", "%i"])
    assert out.returncode == 0, out.stderr
    return set(out.stdout.split())


@pytest.fixture(scope="module")
def slurm_cluster(slurm: str) -> str:
    """The host's name, once `slurm` started the cluster and its status is good."""
    status = run(["bash", str(SCRIPT), "status"])
    assert status.returncode == 0, f"dev-cluster.sh status:\n{status.stdout}\n{status.stderr}"
    return socket.gethostname().split(".")[0]


def test_srun_hostname(slurm_cluster):
    out = run(["srun", "-N1", "-n1", "hostname"])
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().split(".")[0] == slurm_cluster


def test_sbatch_wait_writes_file(slurm_cluster, tmp_path):
    target = tmp_path / "written.txt"
    script = tmp_path / "job.sh"
    script.write_text(f'#!/bin/bash\necho "job $SLURM_JOB_ID on $(hostname -s)" > {target}\n')
    opts = ["--wait", "--parsable", "-p", "batch", "-n1", "--mem=64M", "-t", "00:01:00"]
    out = run(["sbatch", *opts, "-o", str(tmp_path / "slurm-%j.out"), str(script)])
    assert out.returncode == 0, out.stderr
    job_id = out.stdout.strip().split(";")[0]
    assert target.read_text().strip() == f"job {job_id} on {slurm_cluster}"


def test_dask_jobqueue_slurmcluster(slurm_cluster, tmp_path):
    from dask_jobqueue import SLURMCluster
    from distributed import Client

    cluster = SLURMCluster(
        queue="debug",
        cores=1,
        processes=1,
        memory="1GiB",
        walltime="00:10:00",
        python=sys.executable,
        local_directory=str(tmp_path / "worker-space"),
        log_directory=str(tmp_path / "logs"),
    )
    job_ids: set[str] = set()
    try:
        cluster.scale(jobs=2)
        with Client(cluster) as client:
            t0 = time.monotonic()
            client.wait_for_workers(2, timeout=60)
            startup = time.monotonic() - t0
            print(f"2 SLURM workers up in {startup:.1f} s")
            assert len(client.scheduler_info()["workers"]) == 2
            assert client.submit(lambda x: x + 1, 1).result(timeout=30) == 2
            job_ids = {job.job_id for job in cluster.workers.values() if job.job_id}
            assert len(job_ids) == 2
            assert job_ids <= queued_job_ids()
    finally:
        cluster.close()

    deadline = time.monotonic() + 30
    while job_ids & queued_job_ids():
        assert time.monotonic() < deadline, f"jobs still queued: {job_ids & queued_job_ids()}"
        time.sleep(0.5)
