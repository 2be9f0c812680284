"""Inside a batch allocation: `python -m engine.runs.batch RUN_DIR`, once per srun task.

dask-jobqueue's SLURMRunner gives each task its role: task 0 the dask scheduler,
task 1 the driver (this module's `drive`: the same `run()` as `ngff-engine run`),
tasks 2.. the workers. TLS comes from the run's certificate in RUN_DIR, put in dask's
config so that the scheduler, the workers and every client of this process use it.

The driver writes into RUN_DIR: progress.json while it runs, then result.json (or
error.txt) and exit_code (0 done, 2 a problem with the input, 1 anything else).
"""

from __future__ import annotations

import json
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import dask

TLS_FILES = {"ca": "tls-ca.pem", "cert": "tls-cert.pem", "key": "tls-key.pem"}


def write_json(path: Path, data: Any) -> None:
    """Atomically: readers never see half a file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=1))
    os.replace(tmp, path)


def tls_config(run_dir: Path) -> dict[str, Any]:
    ca, cert, key = (str(run_dir / TLS_FILES[k]) for k in ("ca", "cert", "key"))
    return {
        "distributed.comm.require-encryption": True,
        "distributed.comm.tls.ca-file": ca,
        "distributed.comm.tls.scheduler.cert": cert,
        "distributed.comm.tls.scheduler.key": key,
        "distributed.comm.tls.worker.cert": cert,
        "distributed.comm.tls.worker.key": key,
        "distributed.comm.tls.client.cert": cert,
        "distributed.comm.tls.client.key": key,
    }


class Progress:
    """The run's progress callback, mirrored to progress.json for `status()`."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.stages: dict[str, list[int]] = {}
        self.last = 0.0
        self.save(force=True)

    def save(self, force: bool = False) -> None:
        now = time.monotonic()
        if force or now - self.last > 0.5:
            self.last = now
            write_json(self.path, {"stages": self.stages, "time": time.time()})

    def __call__(self, stage: str, total: int):
        self.stages[stage] = [0, total]
        self.save(force=True)

        def advance(n: int) -> None:
            self.stages[stage][0] += n
            self.save(force=self.stages[stage][0] >= total)

        return advance


def drive(run_dir: Path, spec: dict[str, Any], scheduler: str) -> int:
    from engine.core.errors import EngineError
    from engine.core.pipeline import Pipeline
    from engine.runs.runner import run

    try:
        pipeline = Pipeline.build(spec["pipeline"], source=spec.get("config", "pipeline"))
        result = run(
            pipeline,
            input=spec["input"],
            roi=spec["roi"],
            overwrite=spec["overwrite"],
            update=spec["update"],
            resume=spec.get("resume", False),
            scheduler=scheduler,
            progress=Progress(run_dir / "progress.json"),
        )
    except EngineError as exc:
        (run_dir / "error.txt").write_text(f"{exc}\n")
        return 2
    except Exception as exc:
        (run_dir / "error.txt").write_text(
            f"internal error: {type(exc).__name__}: {exc}\n\n{traceback.format_exc()}"
        )
        return 1
    write_json(run_dir / "result.json", result.to_json())
    return 0


def main(argv: list[str]) -> int:
    run_dir = Path(argv[0]).absolute()
    spec = json.loads((run_dir / "run.json").read_text())
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
            "dashboard_address": ":0",
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
            code = drive(run_dir, spec, runner.scheduler_address)
    finally:
        (run_dir / "exit_code").write_text(f"{code}\n")
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
