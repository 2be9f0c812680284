"""Dask workers in SLURM jobs for one run: dask-jobqueue's SLURMCluster from a ClusterSpec.

The driver (this process, e.g. on a login node) runs the dask scheduler; each worker
is a SLURM job submitted with sbatch. Scheduler, workers and client talk over TLS
with a certificate made for this run (`Security.temporary()`): on a shared cluster an
open scheduler port would let any user run code as you. The worker side of the
certificate is written to a private (0700) directory that the compute nodes see
(`shared_directory`, default ~/.ngff-engine) and removed when the run ends.

SLURM's own words reach the user: a job script that sbatch would refuse (bad
partition, account, too much memory) is caught by `sbatch --test-only` before any
job is queued, and a worker job that dies before its worker connects is reported
with the tail of its log.

Walltime, in adaptive mode: SLURM kills a worker job at its time limit, in the middle of
its tasks. So each worker retires first (dask's `--lifetime`, a margin before the
walltime, staggered so that jobs started together do not all leave at once): it hands
its results to the other workers and exits, and adaptive scaling submits a job in its
place (once dask's `distributed.deploy.lost-worker-timeout`, 15 s, has passed: a worker
its nanny restarts keeps its job). A fixed-size cluster has nothing to replace a
retired worker, so there the workers run until the walltime.
"""

from __future__ import annotations

import logging
import math
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from distributed import Client
from distributed.security import Security

from engine.core.errors import EngineError
from engine.core.pipeline import ClusterSpec, duration_seconds
from engine.execute.worker_config import config_exports, worker_config


def _import_jobqueue():
    # dask_jobqueue.runner installs a SIGINT handler that calls sys.exit() (for its
    # SLURMRunner roles): keep Ctrl-C a KeyboardInterrupt in the driver.
    main = threading.current_thread() is threading.main_thread()
    previous = signal.getsignal(signal.SIGINT) if main else None
    import dask_jobqueue

    if main and previous is not None:
        signal.signal(signal.SIGINT, previous)
    return dask_jobqueue


SLURMCluster = _import_jobqueue().SLURMCluster

# Wait this long for every requested worker before starting with those already there.
ALL_WORKERS_WAIT = 60.0
SLURM_COMMANDS = ("sbatch", "squeue", "scancel")
# A worker retires this long before its walltime, at most (dask-jobqueue's docs use 5
# minutes for a 1 hour walltime); a tenth of the walltime when that is shorter.
LIFETIME_MARGIN = 300.0


def base_directory(spec: ClusterSpec) -> Path:
    """Folder shared between this machine and the compute nodes (run files, TLS, logs)."""
    return Path(spec.shared_directory or "~/.ngff-engine").expanduser().absolute()


def log_directory(spec: ClusterSpec) -> Path:
    if spec.log_directory:
        return Path(spec.log_directory).expanduser().absolute()
    return base_directory(spec) / "logs"


def private_directory(parent: Path, prefix: str) -> Path:
    """A new directory only the current user can read (mkdtemp makes it 0700)."""
    try:
        parent.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
    except OSError as exc:
        raise EngineError(f"cannot create a run directory in {parent}: {exc.strerror}") from None


def require_slurm(commands: tuple[str, ...] = SLURM_COMMANDS) -> None:
    missing = [c for c in commands if shutil.which(c) is None]
    if missing:
        raise EngineError(
            f"SLURM: {', '.join(missing)} not found on PATH; run where SLURM's client commands "
            "are available (e.g. after `module load slurm`), or use --cluster local"
        )


def slurm_message(text: str) -> str:
    """SLURM's own error lines from a command's output, as one line."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    errors = [
        line
        for line in lines
        if "error" in line.lower() or line.lower().startswith("allocation failure")
    ]
    chosen = errors or lines[-1:] or ["no message"]
    # dask-jobqueue quotes the command's stderr after 'stderr:'; keep only SLURM's lines.
    return "; ".join(dict.fromkeys(chosen))


def sbatch_check(script: str, what: str = "the worker job") -> None:
    """Let SLURM judge a job script without queueing it (`sbatch --test-only`)."""
    with tempfile.NamedTemporaryFile("w", suffix=".sh", prefix="ngff-engine-") as f:
        f.write(script)
        f.flush()
        try:
            proc = subprocess.run(
                ["sbatch", "--test-only", f.name], capture_output=True, text=True, timeout=60
            )
        except FileNotFoundError:
            require_slurm(("sbatch",))
            raise
        except subprocess.TimeoutExpired:
            raise EngineError("SLURM: sbatch --test-only did not answer within 60 s") from None
    if proc.returncode != 0:
        raise EngineError(f"SLURM refused {what}: {slurm_message(proc.stderr + proc.stdout)}")


def job_states(job_ids: list[str]) -> dict[str, tuple[str, str]]:
    """State and reason of the jobs SLURM still lists (ended jobs are absent)."""
    if not job_ids:
        return {}
    proc = subprocess.run(
        ["squeue", "-h", "-j", ",".join(job_ids), "-o", "%i %T %r"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    states = {}
    for line in proc.stdout.splitlines():
        parts = line.split(maxsplit=2)
        if len(parts) >= 2:
            states[parts[0]] = (parts[1], parts[2] if len(parts) > 2 else "")
    return states


def log_tail(paths: list[Path], lines: int = 3) -> str:
    for path in paths:
        try:
            text = path.read_text(errors="replace").strip()
        except OSError:
            continue
        if text:
            return " | ".join(text.splitlines()[-lines:])
    return "its log is empty"


def resource_directives(
    spec: ClusterSpec, resources: dict[str, float]
) -> tuple[list[str], list[str]]:
    """Job directives and dask worker arguments for worker resources: every worker of a
    job offers them to dask, and GPUs are requested from SLURM (`--gres=gpu:N`, for all
    the job's workers)."""
    if not resources:
        return [], []
    offer = ",".join(f"{name}={amount:g}" for name, amount in sorted(resources.items()))
    directives = []
    if "gpu" in resources:
        directives.append(f"--gres=gpu:{math.ceil(resources['gpu']) * spec.processes}")
    return directives, ["--resources", offer]


def worker_lifetime(spec: ClusterSpec) -> tuple[float, float] | None:
    """(lifetime, stagger) in seconds of each worker job's dask worker, in adaptive mode:
    `spec.lifetime`, else the walltime less a margin; the stagger stays inside that margin.
    None in fixed-size mode (see the module's docstring)."""
    if not spec.adaptive:
        return None
    walltime = duration_seconds(spec.walltime)
    if spec.lifetime is not None:
        lifetime = duration_seconds(spec.lifetime)
    else:
        lifetime = walltime - min(LIFETIME_MARGIN, walltime / 10)
    stagger = min((walltime - lifetime) / 2, lifetime / 10)
    return lifetime, stagger


def lifetime_args(spec: ClusterSpec) -> list[str]:
    """The dask worker's command-line options for `worker_lifetime`."""
    span = worker_lifetime(spec)
    if span is None:
        return []
    lifetime, stagger = span
    return ["--lifetime", f"{lifetime:.1f}s", "--lifetime-stagger", f"{stagger:.1f}s"]


def make_cluster(
    spec: ClusterSpec,
    security: Security | None,
    tls_dir: Path | None,
    logs: Path,
    resources: dict[str, float] | None = None,
) -> SLURMCluster:
    directives, worker_args = resource_directives(spec, resources or {})
    return SLURMCluster(
        queue=spec.partition,
        account=spec.account,
        cores=spec.cores,
        processes=spec.processes,
        memory=spec.memory,
        walltime=spec.walltime,
        job_extra_directives=[*spec.job_extra_directives, *directives],
        job_script_prologue=config_exports(worker_config()),
        worker_extra_args=[*worker_args, *lifetime_args(spec)],
        python=spec.python or sys.executable,
        job_name=spec.job_name,
        log_directory=str(logs),
        interface=spec.interface,
        security=security,
        protocol="tls://" if security is not None else None,
        shared_temp_directory=str(tls_dir) if tls_dir is not None else None,
        # no dashboard; its HTTP server (health, metrics) on a free port
        scheduler_options={"dashboard": False, "dashboard_address": "127.0.0.1:0"},
        silence_logs=logging.CRITICAL,
    )


def start_jobs(cluster: SLURMCluster, jobs: int) -> None:
    """Submit `jobs` worker jobs and wait until sbatch accepted (or refused) each one."""

    async def submit() -> None:
        cluster.scale(jobs=jobs)
        await cluster._correct_state()

    try:
        cluster.sync(submit)
    except (RuntimeError, OSError) as exc:
        raise EngineError(f"SLURM refused a worker job: {slurm_message(str(exc))}") from None


def wait_for_workers(client: Client, cluster: SLURMCluster, wanted: int, logs: Path) -> None:
    """Until `wanted` workers connected (or ALL_WORKERS_WAIT passed with at least one).

    A worker job that leaves the queue before its worker connected is an error naming
    the job and the end of its log; jobs pending in the queue are waited for.
    """
    started = time.monotonic()
    checked = 0.0
    while True:
        connected = len(client.nthreads())
        if connected >= wanted:
            return
        now = time.monotonic()
        if connected and now - started > ALL_WORKERS_WAIT:
            return
        if now - checked >= 1.0:
            checked = now
            jobs = {name: job.job_id for name, job in cluster.workers.items() if job.job_id}
            states = job_states(list(jobs.values()))
            if connected == 0 and jobs and not states:
                job_id = next(iter(jobs.values()))
                name = f"{cluster.job_name}-{job_id}"
                tail = log_tail([logs / f"{name}.err", logs / f"{name}.out"])
                raise EngineError(
                    f"SLURM worker job {job_id} ended before its dask worker connected: {tail} "
                    f"(logs in {logs})"
                )
        time.sleep(0.2)


def wanted_workers(spec: ClusterSpec) -> int:
    jobs = (spec.min_jobs or 0) if spec.adaptive else (spec.jobs or 1)
    return jobs * spec.processes


@contextmanager
def slurm_client(spec: ClusterSpec, resources: dict[str, float] | None = None) -> Iterator[Client]:
    """A client on a scheduler here, with workers in SLURM jobs (offering `resources`);
    jobs are cancelled at exit."""
    require_slurm()
    logs = log_directory(spec)
    try:
        logs.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise EngineError(f"cannot create the SLURM log folder {logs}: {exc.strerror}") from None
    tls_dir = private_directory(base_directory(spec) / "runs", "tls-") if spec.tls else None
    security = Security.temporary() if spec.tls else None
    cluster = None
    try:
        cluster = make_cluster(spec, security, tls_dir, logs, resources)
        with cluster:
            sbatch_check(cluster.job_script())
            if spec.adaptive:
                if spec.min_jobs:
                    start_jobs(cluster, spec.min_jobs)
                cluster.adapt(minimum_jobs=spec.min_jobs or 0, maximum_jobs=spec.max_jobs)
            else:
                start_jobs(cluster, spec.jobs or 1)
            with Client(cluster) as client:
                wait_for_workers(client, cluster, wanted_workers(spec), logs)
                yield client
    finally:
        # dask-jobqueue keeps the worker's certificate files open (deleted on close).
        for value in list(vars(cluster).values()) if cluster is not None else []:
            if isinstance(value, tempfile._TemporaryFileWrapper):
                value.close()
        if tls_dir is not None:
            shutil.rmtree(tls_dir, ignore_errors=True)
