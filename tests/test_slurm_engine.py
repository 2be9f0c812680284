"""The engine on the real one-node SLURM of slurm/dev-cluster.sh: no mocks, no skips.

- `run --cluster slurm`: dask workers in SLURM jobs (dask-jobqueue's SLURMCluster), over
  TLS, give output byte-identical to a local run of the standard pipeline;
- `submit --wait`, `submit(..., batch=True).wait()`: the whole run in one allocation;
- `submit(...)` in a thread with adaptive SLURM workers;
- a worker job scancelled mid-run: the run completes with identical output;
- TLS: a client without the run's certificate cannot run a task on the scheduler;
- SLURM's own error text for a bad partition, and a clear error when sbatch is missing;
- a batch job cancelled mid-run (driver, scheduler and workers gone, as at a walltime),
  submitted again with `--resume --wait`: output identical, marked chunks skipped; while
  the first job ran, `status IMAGE` showed the run and its chunks done from the run record;
- adaptive SLURM workers that retire at their lifetime (as before their walltime) are
  replaced by new worker jobs;
- the worker memory SLURM grants (memory / processes per job) refuses a plan that cannot
  fit, with the numbers, before any chunk runs.

The sample is small (32x128x128, chunks 16x64x64: 8 chunks) to keep the module short.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import re
import shutil
import ssl
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import yaml
import zarr

from engine import EngineError, Pipeline, run, submit
from engine.core.pipeline import ClusterSpec
from engine.io.sample_zarr import write_sample
from engine.state.markers import read_records
from engine.state.records import list_runs, read_record

REPO = Path(__file__).resolve().parent.parent
TESTS = REPO / "tests"
CONFIG = REPO / "configs" / "nuclei.yaml"
SHAPE, CHUNKS = (32, 128, 128), (16, 64, 64)
OUTPUT = "labels/nuclei"
METADATA = {"zarr.json", ".zattrs", ".zarray", ".zgroup"}


def slow_identity(
    block: np.ndarray, delay: float = 0.0, trace: str = "", hold: str = ""
) -> np.ndarray:
    """For the fault tests: the image unchanged, slowly (workers import it from tests/).
    Each call leaves `<job>-<n>.start` and, if it finishes, `.end` in `trace`; with `hold`,
    it also waits until that file exists (the test makes it when it saw what it waits for)."""
    mark = Path(trace) / f"{os.environ.get('SLURM_JOB_ID', 'local')}-{uuid.uuid4().hex}"
    if trace:
        mark.with_suffix(".start").touch()
    time.sleep(delay)
    while hold and not Path(hold).exists():
        time.sleep(0.1)
    if trace:
        mark.with_suffix(".end").touch()
    return block


def slow_pipeline(trace: Path, delay: float, hold: Path | None = None) -> dict:
    """The standard pipeline after a `slow_identity` step: the same output, slowly (its
    first stage, mask/reduce-0, calls it once per chunk)."""
    standard = Pipeline.from_yaml(CONFIG).to_dict()
    slow = {
        "name": "slow",
        "op": "function",
        "input": "image",
        "params": {
            "function": "test_slurm_engine:slow_identity",
            "kwargs": {"delay": delay, "trace": str(trace), "hold": str(hold or "")},
        },
    }
    steps = [slow, *standard["steps"]]
    steps[1] = {**steps[1], "input": "slow"}
    return {**standard, "steps": steps}


def sh(cmd: list[str], timeout: float = 120, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kw)


def cli(*args: str, cwd: Path, env: dict | None = None, timeout: float = 180):
    return sh([sys.executable, "-m", "engine.cli", *args], timeout=timeout, cwd=cwd, env=env)


def queued(name: str) -> list[str]:
    return sh(["squeue", "-h", "-n", name, "-o", "%i"]).stdout.split()


def wait_gone(name: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while queued(name):
        assert time.monotonic() < deadline, f"jobs named {name} still queued: {queued(name)}"
        time.sleep(0.3)


def data_files(root: Path) -> dict[str, bytes]:
    """Every chunk file of an output (metadata aside: it holds run ids and times)."""
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name not in METADATA
    }


def assert_same_output(image: Path, reference: Path) -> None:
    got, want = image / OUTPUT, reference / OUTPUT
    files = data_files(want)
    assert files, f"no chunk files under {want}"
    assert data_files(got) == files, f"{got} differs from {want}"
    for level in ("s0", "s1"):
        a = zarr.open_array(str(got / level), mode="r")[...]
        b = zarr.open_array(str(want / level), mode="r")[...]
        assert np.array_equal(a, b)


def pythonpath() -> str:
    return os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])


@pytest.fixture(scope="module")
def slurm() -> str:
    proc = sh(["bash", str(REPO / "slurm" / "dev-cluster.sh"), "start"], timeout=900)
    assert proc.returncode == 0, f"dev-cluster.sh start failed:\n{proc.stdout}\n{proc.stderr}"
    return "debug"


@pytest.fixture(scope="module")
def sample(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("sample") / "sample.zarr"
    write_sample(str(path), SHAPE, CHUNKS, "0.5", 0)
    return path


@pytest.fixture(scope="module")
def local(sample, tmp_path_factory) -> Path:
    """The standard pipeline on a local 2-worker cluster: the reference."""
    image = tmp_path_factory.mktemp("local") / "sample.zarr"
    shutil.copytree(sample, image)
    started = time.perf_counter()
    result = run(Pipeline.from_yaml(CONFIG), input=image, workers=2)
    print(f"local run (2 workers, incl. cluster start): {time.perf_counter() - started:.1f} s")
    assert result.labels["nuclei"] > 10
    return image


@pytest.fixture
def image(sample, tmp_path) -> Path:
    path = tmp_path / "sample.zarr"
    shutil.copytree(sample, path)
    return path


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


# --- SLURM workers from a driver ------------------------------------------------------------


def test_cli_run_cluster_slurm_equals_local(slurm, local, image, tmp_path):
    shared = tmp_path / "shared"
    started = time.perf_counter()
    proc = cli(
        "run", str(CONFIG), "--input", str(image), "--cluster", "slurm", "--partition", slurm,
        "--jobs", "2", "--memory", "1GiB", "--walltime", "00:10:00", "--shared-dir", str(shared),
        "--json", cwd=tmp_path,
    )  # fmt: skip
    seconds = time.perf_counter() - started
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    print(f"--cluster slurm --jobs 2: {seconds:.1f} s in all, run {result['seconds']:.1f} s")
    assert result["objects"]["nuclei"] > 10
    assert_same_output(image, local)
    # the worker jobs are cancelled, their logs kept, the run's certificate removed
    logs = list((shared / "logs").glob("ngff-engine-*.err"))
    assert len(logs) == 2
    for log in logs:
        assert "tls://" in log.read_text()
        wait_gone_id(log.stem.rsplit("-", 1)[1])
    assert list((shared / "runs").iterdir()) == []


def wait_gone_id(job_id: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while job_id in sh(["squeue", "-h", "-o", "%i"]).stdout.split():
        assert time.monotonic() < deadline, f"job {job_id} still queued"
        time.sleep(0.3)


def test_bad_partition_reports_slurm_message(slurm, image, tmp_path):
    proc = cli(
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
        proc = cli(
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


def test_scancel_one_worker_job_mid_run(slurm, local, image, tmp_path, monkeypatch):
    """Two worker jobs; one is scancelled after the first batches: the run completes on
    the other, output identical to the local run of the standard pipeline."""
    monkeypatch.setenv("PYTHONPATH", pythonpath())
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
    assert_same_output(image, local)
    wait_gone(cluster["job_name"])


# --- the whole run as a batch job -----------------------------------------------------------


def test_cli_submit_wait_equals_local(slurm, local, image, tmp_path):
    # SLURM settings from the config's cluster: section, the size from a flag
    shared = tmp_path / "shared"
    config = tmp_path / "nuclei.yaml"
    cluster = {"partition": slurm, "memory": "1GiB", "shared_directory": str(shared)}
    config.write_text(CONFIG.read_text() + yaml.safe_dump({"cluster": cluster}))
    base = ["--input", str(image), "--jobs", "2"]
    dry = cli("submit", str(config), *base, "--dry-run", cwd=tmp_path)
    assert dry.returncode == 0, dry.stderr
    assert "#SBATCH --ntasks=4" in dry.stdout and "#SBATCH --partition=debug" in dry.stdout
    assert "-m engine.runs.batch" in dry.stdout and "{{" not in dry.stdout
    assert not shared.exists() and not (image / OUTPUT).exists()  # nothing submitted

    started = time.perf_counter()
    proc = cli("submit", str(config), *base, "--wait", cwd=tmp_path)
    print(f"submit --wait: {time.perf_counter() - started:.1f} s")
    assert proc.returncode == 0, proc.stderr
    assert "submitted batch job" in proc.stdout and "objects" in proc.stdout
    job_id = proc.stdout.split("submitted batch job")[1].split()[0]
    log = shared / "logs" / f"ngff-engine-{job_id}.out"
    assert f"log: {log}" in proc.stdout.replace("\n    ", "")
    assert "tls://" in log.read_text() and "exit state 0" in log.read_text()
    assert_same_output(image, local)

    status = cli("status", job_id, "--shared-dir", str(shared), "--json", cwd=tmp_path)
    assert status.returncode == 0, status.stderr
    info = json.loads(status.stdout)
    assert info["state"] == "done" and info["job_id"] == job_id
    assert all(done == total for done, total in info["progress"].values())
    run_dir = Path(info["run"])
    assert run_dir.stat().st_mode & 0o077 == 0 and not (run_dir / "tls-key.pem").exists()


def test_python_submit_batch_wait_equals_local(slurm, local, image, tmp_path):
    handle = submit(
        Pipeline.from_yaml(CONFIG), input=image, cluster=spec(tmp_path, jobs=1), batch=True
    )
    assert handle.status() in ("pending", "running")  # returned at once
    assert handle.outputs == {"nuclei": str(image / OUTPUT)}
    result = handle.wait(timeout=120)
    assert handle.status() == "done" and handle.exit_code == 0
    assert result.labels["nuclei"] > 10 and result.outputs == handle.outputs
    assert_same_output(image, local)


def test_python_submit_batch_failure_and_cancel(slurm, sample, tmp_path, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", pythonpath())  # sbatch passes it on to the job
    images = [tmp_path / "a.zarr", tmp_path / "b.zarr"]
    for path in images:
        shutil.copytree(sample, path)
    # A run that fails inside the job: wait() raises with the driver's message.
    bad = Pipeline().add(
        "boom", "function", function="user_functions:explode",
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


def test_python_submit_thread_with_adaptive_slurm_workers(slurm, local, image, tmp_path):
    # adaptive from zero jobs: dask-jobqueue submits worker jobs when tasks wait
    handle = submit(CONFIG, input=image, cluster=spec(tmp_path, min_jobs=0, max_jobs=2))
    assert handle.status() == "running"
    result = handle.wait(timeout=120)
    assert handle.status() == "done"
    assert set(handle.progress()) == {s.name for s in result.stages if s.tasks}
    assert_same_output(image, local)
    assert len(list((tmp_path / "shared" / "logs").glob("*.err"))) >= 1


# --- faults: a cancelled batch job resumed, workers at their lifetime, worker memory ---------

SLOW_STAGE = "mask/reduce-0"  # calls slow_identity once per chunk: 8 chunks


def image_status(image: Path, cwd: Path) -> list[dict]:
    proc = cli("status", str(image), "--json", cwd=cwd)
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


def test_killed_batch_run_resumes_and_status_follows_it(slurm, local, image, tmp_path, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", pythonpath())  # sbatch passes it on to the job
    trace = tmp_path / "trace"
    trace.mkdir()
    config = tmp_path / "slow.yaml"
    cluster = spec(tmp_path, jobs=2)
    config.write_text(yaml.safe_dump({**slow_pipeline(trace, 1.5), "cluster": cluster}))
    submit = ["submit", str(config), "--input", str(image)]
    proc = cli(*submit, "--json", cwd=tmp_path)
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
    proc = cli(*submit, "--resume", "--wait", "--json", cwd=tmp_path, timeout=240)
    assert proc.returncode == 0, proc.stderr + proc.stdout
    result = json.loads(proc.stdout)
    print(f"resumed batch run: {time.monotonic() - started:.1f} s")
    assert result["run_id"] == run_id
    assert_same_output(image, local)

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


# --- adaptive workers and their lifetime ----------------------------------------------------

LOG_TIME = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) ")


def first_time(log: Path, *words: str) -> float | None:
    """When a worker job's log first has a line with all of `words` (epoch seconds)."""
    for line in log.read_text(errors="replace").splitlines():
        match = LOG_TIME.match(line)
        if match and all(w in line for w in words):
            return dt.datetime.strptime(match.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
    return None


class JobWatch:
    """squeue, every 0.2 s, for the jobs of one name: when each was first seen running and
    how many ran at most at once; `flag` is created once `jobs` distinct jobs have run."""

    def __init__(self, name: str, flag: Path, jobs: int) -> None:
        self.name, self.flag, self.jobs = name, flag, jobs
        self.running: dict[str, float] = {}
        self.most = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._watch, daemon=True)
        self.thread.start()

    def _watch(self) -> None:
        while not self.stop.wait(0.2):
            lines = sh(["squeue", "-h", "-n", self.name, "-o", "%i %T"]).stdout.splitlines()
            now = [line.split()[0] for line in lines if line.endswith(" RUNNING")]
            for job in now:
                self.running.setdefault(job, time.time())
            self.most = max(self.most, len(now))
            if len(self.running) >= self.jobs:
                self.flag.touch()

    def close(self) -> None:
        self.stop.set()
        self.thread.join()
        self.flag.touch()  # never leave a worker waiting


def test_adaptive_workers_retire_at_their_lifetime_and_are_replaced(
    slurm, local, image, tmp_path, monkeypatch
):
    """Workers of 1 to 2 jobs retire 6 s after they start. Every chunk waits until a third
    job ran (the replacement of a retired one), so the run outlives its first workers:
    it completes only on replacements, its waiting chunks redone after each retirement."""
    import dask

    monkeypatch.setenv("PYTHONPATH", pythonpath())
    trace = tmp_path / "trace"
    trace.mkdir()
    replaced = tmp_path / "replaced"
    cluster = spec(tmp_path, min_jobs=1, max_jobs=2, lifetime="6s")
    watch = JobWatch(cluster["job_name"], replaced, jobs=3)
    pipeline = Pipeline.build(slow_pipeline(trace, 0.25, hold=replaced))
    started = time.perf_counter()
    # dask waits 15 s before it replaces a worker that left; 1 s keeps the test short
    try:
        with dask.config.set({"distributed.deploy.lost-worker-timeout": "1s"}):
            result = submit(pipeline, input=image, cluster=cluster).wait(timeout=150)
    finally:
        watch.close()
    seconds = time.perf_counter() - started
    assert_same_output(image, local)
    assert result.labels["nuclei"] > 10

    logs = {log.stem.rsplit("-", 1)[1]: log for log in (tmp_path / "shared/logs").glob("*.err")}
    joined = {job: first_time(log, "Registered to:") for job, log in logs.items()}
    retired = [first_time(log, "gracefully", "worker-lifetime-reached") for log in logs.values()]
    retired = sorted(t for t in retired if t is not None)
    startup = [t - watch.running[job] for job, t in joined.items() if t and job in watch.running]
    rejoined = [min([t - r for t in joined.values() if t and t > r], default=None) for r in retired]
    print(
        f"adaptive 1..2 jobs, lifetime 6 s: run {seconds:.1f} s, {len(watch.running)} worker "
        f"jobs ran, at most {watch.most} at once, {len(retired)} retired; worker start-up "
        f"{', '.join(f'{s:.1f}' for s in startup)} s; a worker joined "
        f"{', '.join('-' if w is None else f'{w:.1f}' for w in rejoined)} s after each retired"
    )
    # more jobs ran than ever at once: retired workers were replaced
    assert retired and len(watch.running) > watch.most


def test_job_script_lifetime_from_walltime(tmp_path):
    from engine.core.pipeline import ClusterSpec
    from engine.execute.slurm import lifetime_args, worker_lifetime

    def cluster(**fields) -> ClusterSpec:
        return ClusterSpec.model_validate(spec(tmp_path, **fields))

    # adaptive: the walltime less min(5 min, a tenth of it), staggered inside that margin
    assert worker_lifetime(cluster(min_jobs=0, max_jobs=4, walltime="01:00:00")) == (3300, 150)
    assert worker_lifetime(cluster(min_jobs=0, max_jobs=4, walltime="00:10:00")) == (540, 30)
    assert lifetime_args(cluster(min_jobs=1, max_jobs=2, lifetime="6s")) == [
        "--lifetime", "6.0s", "--lifetime-stagger", "0.6s",
    ]  # fmt: skip
    assert lifetime_args(cluster(jobs=2)) == []  # nothing would replace a retired worker


# --- worker memory from the SLURM request ----------------------------------------------------


def test_slurm_worker_memory_refuses_a_plan_that_cannot_fit(slurm, image, tmp_path):
    """Two workers in one 600 MiB job: each gets 300 MiB, less than the worker process and
    its chunk cache alone are projected to need."""
    proc = cli(
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


def test_cluster_section_and_flags(tmp_path, capsys):
    from engine.cli.commands import main
    from engine.execute.cluster import resolve_cluster

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
        assert main(args) == 2
        err = capsys.readouterr().err
        assert message in " ".join(err.split()), err
