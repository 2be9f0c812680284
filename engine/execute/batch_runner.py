"""Inside a SLURM batch allocation: dask-jobqueue's SLURMRunner gives each srun task its
role (task 0 the dask scheduler, task 1 the driver, tasks 2.. the workers), with the
run's TLS certificate (engine/execute/tls.py) in dask's config so that the scheduler,
the workers and every client of the driver use it. The driver's work is a callback:
engine/runs/batch.py runs the pipeline there.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import dask

from engine.execute.tls import tls_config


def serve(run_dir: Path, spec: dict[str, Any], drive: Callable[[str], int]) -> int:
    """Take this srun task's role in the allocation: the scheduler and the workers serve
    inside SLURMRunner until the driver is done; the driver (task 1) runs `drive(address)`
    once every worker has connected, and its exit code goes to RUN_DIR/exit_code."""
    tls = spec.get("tls", True)
    if tls:
        dask.config.set(tls_config(run_dir))

    from dask_jobqueue.slurm import SLURMRunner  # installs its SIGINT -> exit handler
    from distributed.core import rpc
    from distributed.security import Security

    security = Security()  # from the config set above

    class Runner(SLURMRunner):
        async def before_client_start(self) -> None:
            # SLURMRunner's rpc to the scheduler has no TLS arguments; give it ours.
            self.scheduler_comm = rpc(
                self.scheduler_address,
                connection_args=security.get_connection_args("client"),
            )

    protocol = "tls" if tls else "tcp"
    runner = Runner(
        scheduler_file=str(run_dir / "scheduler.json"),
        scheduler_options={
            "protocol": protocol,
            "security": security,
            "dashboard": False,
            "dashboard_address": "127.0.0.1:0",
        },
        worker_options={
            "nthreads": int(spec.get("threads", 1)),
            "memory_limit": spec.get("memory_limit", "auto"),
            "security": security,
            "protocol": protocol,
        },
    )
    # Only the driver gets here: the scheduler and the workers exit inside the runner.
    code = 1
    try:
        with runner:
            from distributed import Client

            timeout = spec.get("worker_timeout", 300)
            try:
                with Client(runner.scheduler_address, security=security) as client:
                    client.wait_for_workers(runner.n_workers, timeout=timeout)
            except (TimeoutError, OSError) as exc:
                (run_dir / "error.txt").write_text(
                    f"the {runner.n_workers} dask worker(s) of the allocation did not all "
                    f"connect within {timeout} s ({type(exc).__name__}: {exc})\n"
                )
                return code
            code = drive(runner.scheduler_address)
    finally:
        (run_dir / "exit_code").write_text(f"{code}\n")
    return code
