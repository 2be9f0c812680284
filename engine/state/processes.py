"""Who runs a run, and whether that process is gone: what locks (engine/state/locks.py)
and run records (engine/state/records.py) both ask."""

from __future__ import annotations

import os
import socket
import subprocess
from typing import Any


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def this_process() -> dict[str, Any]:
    """Who holds a lock or runs a run: host, pid and, inside a SLURM job, its id (the one
    thing another node can check)."""
    owner: dict[str, Any] = {"host": socket.gethostname(), "pid": os.getpid()}
    job = os.environ.get("SLURM_JOB_ID")
    if job:
        owner["slurm_job"] = job
    return owner


def _slurm_job_ended(job: str) -> bool:
    """SLURM no longer lists the job; False when squeue cannot tell (absent, no answer)."""
    try:
        proc = subprocess.run(
            ["squeue", "-h", "-j", job, "-o", "%A"], capture_output=True, text=True, timeout=30
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    if proc.returncode == 0:
        return job not in proc.stdout.split()
    return "Invalid job id" in proc.stderr  # purged from SLURM's memory: long over


def is_stale(owner: dict[str, Any]) -> bool:
    if owner.get("host") == socket.gethostname():
        return isinstance(owner.get("pid"), int) and not _alive(owner["pid"])
    job = owner.get("slurm_job")
    return isinstance(job, str) and job.isdigit() and _slurm_job_ended(job)
