"""Adaptive SLURM workers that retire at their lifetime (as before their walltime) are
replaced by new worker jobs; the job script's lifetime from the walltime."""

from __future__ import annotations

import datetime as dt
import re
import threading
import time
from pathlib import Path

import pytest
from conftest import SLURM_SAMPLE, SampleImages, pythonpath_with_tests
from slurm_jobs import assert_same_output, sh, slow_pipeline, spec

from engine import Pipeline, submit


@pytest.fixture
def image(sample_image: SampleImages, tmp_path: Path) -> Path:
    """A fresh copy of the SLURM tests' sample."""
    return sample_image(*SLURM_SAMPLE, copy_to=tmp_path / "sample.zarr")


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
    slurm, slurm_reference, image, tmp_path, monkeypatch
):
    """Workers of 1 to 2 jobs retire 6 s after they start. Every chunk waits until a third
    job ran (the replacement of a retired one), so the run outlives its first workers:
    it completes only on replacements, its waiting chunks redone after each retirement."""
    import dask

    monkeypatch.setenv("PYTHONPATH", pythonpath_with_tests())
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
    assert_same_output(image, slurm_reference)
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
