"""What the SLURM tests (test_slurm_*.py) share: the standard pipeline made slow, jobs and
commands as processes, the job queue, and outputs compared chunk file by chunk file.

They run on the real one-node SLURM of slurm/dev-cluster.sh (the `slurm` fixture starts
it), on the sample SLURM_SAMPLE (32x128x128, chunks 16x64x64: 8 chunks) to stay short;
`slurm_reference` is the standard pipeline's output on it from a local run.
"""

from __future__ import annotations

import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import zarr
from conftest import CONFIGS, tree_hash

from engine import Pipeline

CONFIG = CONFIGS / "nuclei.yaml"
OUTPUT = "labels/nuclei"


def slow_pipeline(trace: Path, delay: float, hold: Path | None = None) -> dict:
    """The standard pipeline after a `slow_identity` step: the same output, slowly (its
    first stage, mask/reduce-0, calls it once per chunk)."""
    standard = Pipeline.from_yaml(CONFIG).to_dict()
    slow = {
        "name": "slow",
        "op": "function",
        "input": "image",
        "params": {
            "function": "user.functions:slow_identity",
            "kwargs": {"delay": delay, "trace": str(trace), "hold": str(hold or "")},
        },
    }
    steps = [slow, *standard["steps"]]
    steps[1] = {**steps[1], "input": "slow"}
    return {**standard, "steps": steps}


def sh(cmd: list[str], timeout: float = 120, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kw)


def cli_process(*args: str, cwd: Path, env: dict | None = None, timeout: float = 180):
    """`python -m engine.cli ARGS` as a process."""
    return sh([sys.executable, "-m", "engine.cli", *args], timeout=timeout, cwd=cwd, env=env)


def queued(name: str) -> list[str]:
    return sh(["squeue", "-h", "-n", name, "-o", "%i"]).stdout.split()


def wait_gone(name: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while queued(name):
        assert time.monotonic() < deadline, f"jobs named {name} still queued: {queued(name)}"
        time.sleep(0.3)


def assert_same_output(image: Path, reference: Path) -> None:
    got, want = image / OUTPUT, reference / OUTPUT
    files = tree_hash(want, chunks_only=True)  # metadata aside: it holds run ids and times
    assert files, f"no chunk files under {want}"
    assert tree_hash(got, chunks_only=True) == files, f"{got} differs from {want}"
    for level in ("s0", "s1"):
        a = zarr.open_array(str(got / level), mode="r")[...]
        b = zarr.open_array(str(want / level), mode="r")[...]
        assert np.array_equal(a, b)


def spec(tmp_path: Path, **fields) -> dict:
    """Cluster fields for a test: its own job name, logs and shared folder."""
    return {
        "kind": "slurm",
        "partition": "debug",
        "memory": "1GiB",
        "walltime": "00:10:00",
        "job_name": f"t-{uuid.uuid4().hex[:8]}",
        "shared_directory": str(tmp_path / "shared"),
        **fields,
    }


def wait_gone_id(job_id: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while job_id in sh(["squeue", "-h", "-o", "%i"]).stdout.split():
        assert time.monotonic() < deadline, f"job {job_id} still queued"
        time.sleep(0.3)
