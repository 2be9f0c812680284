"""`submit()`: start a run and return at once with a handle (status, progress, wait, cancel).

Two kinds of run behind one handle:

- in this process (`batch=False`, the default): `run()` in a background thread, on a
  local cluster or with dask workers in SLURM jobs (`cluster="slurm"`), so a notebook
  can keep working and look at the outputs when the run is done;
- a batch job (`batch=True`, what `ngff-engine submit` does): the whole run (scheduler,
  driver, workers) inside one SLURM allocation, from the template in slurm/; the handle
  follows the job through squeue and the files the driver writes in the run folder.

Everything that can be wrong with the config, image, ROI and existing outputs is
checked here, before anything is started or submitted.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import re
import shlex
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from engine.core.errors import ConfigError, EngineError, in_python_terms
from engine.core.pipeline import ClusterSpec, Pipeline, RoiSpec
from engine.execute.placement import ClusterArg, resolve_cluster, size_bytes
from engine.execute.tls import write_certificates
from engine.plan.fingerprint import layout_hash
from engine.runs.bookkeeping import check_resumable
from engine.runs.collection_report import collection_outputs
from engine.runs.outputs import check_flags, check_output
from engine.runs.planning import make_plan, resolve_input, resolve_workspace
from engine.runs.progress import StageCounts
from engine.runs.result import RunResult
from engine.runs.units import UnitsResult, is_units_run, run
from engine.state.records import find_resumable

TEMPLATE = Path(__file__).with_name("run.sbatch.template")  # slurm/ links to it
FIELD = re.compile(r"{{\s*(\w+)\s*}}")
TERMINAL = ("done", "failed", "cancelled")


class RunCancelled(EngineError):
    """The run was cancelled through its handle."""


class RunHandle:
    """What `submit` returns. `status()` is one of pending, running, done, failed,
    cancelled; `progress()` maps each stage started so far to (tasks done, tasks)."""

    outputs: dict[str, str]

    def status(self) -> str:
        raise NotImplementedError

    def progress(self) -> dict[str, tuple[int, int]]:
        raise NotImplementedError

    def wait(self, timeout: float | None = None) -> RunResult:
        raise NotImplementedError

    def cancel(self) -> None:
        raise NotImplementedError

    def done(self) -> bool:
        return self.status() in TERMINAL


class ThreadRun(RunHandle):
    """`run()` in a daemon thread of this process. `cancel()` stops it when the next
    batch of chunk tasks finishes (outputs are then partly written, as after a kill)."""

    def __init__(self, pipeline: Pipeline, outputs: dict[str, str], **kwargs: Any) -> None:
        self.outputs = outputs
        self._kwargs = kwargs
        self._pipeline = pipeline
        self._cancel = threading.Event()
        self._counts = StageCounts(on_change=self._check_cancel)
        self._state = "running"
        self._result: RunResult | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._main, name="ngff-engine-run", daemon=True)
        self._thread.start()

    def _check_cancel(self, stage: str, final: bool) -> None:
        if self._cancel.is_set():
            raise RunCancelled("run cancelled")

    def _main(self) -> None:
        try:
            self._result = run(self._pipeline, progress=self._counts, **self._kwargs)
            self._state = "done"
        except RunCancelled as exc:
            self._error = exc
            self._state = "cancelled"
        except BaseException as exc:  # handed to wait()
            self._error = exc
            self._state = "failed"

    def status(self) -> str:
        return self._state

    def progress(self) -> dict[str, tuple[int, int]]:
        return self._counts.snapshot()

    def wait(self, timeout: float | None = None) -> RunResult:
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise TimeoutError(f"run still {self._state} after {timeout} s")
        if self._error is not None:
            raise self._error
        assert self._result is not None
        return self._result

    def cancel(self) -> None:
        self._cancel.set()


class BatchRun(RunHandle):
    """A batch job: the state comes from squeue while SLURM lists the job, then from
    the files the driver wrote in the run folder."""

    def __init__(self, run_dir: str | Path) -> None:
        self.run_dir = Path(run_dir)
        try:
            job = json.loads((self.run_dir / "job.json").read_text())
        except (OSError, ValueError):
            raise EngineError(f"{self.run_dir} is not the folder of a submitted run") from None
        self.job_id: str = job["job_id"]
        self.log: str = job["log"]
        self.outputs = job["outputs"]

    def __repr__(self) -> str:
        return f"BatchRun(job {self.job_id}, {self.run_dir})"

    def _file(self, name: str) -> str | None:
        try:
            return (self.run_dir / name).read_text()
        except OSError:
            return None

    @property
    def exit_code(self) -> int | None:
        text = self._file("exit_code")
        return int(text) if text and text.strip().lstrip("-").isdigit() else None

    def status(self) -> str:
        from engine.execute.slurm import job_states

        state = job_states([self.job_id]).get(self.job_id)
        if state is not None:
            return "pending" if state[0] == "PENDING" else "running"
        code = self.exit_code
        if code is not None:
            return "done" if code == 0 else "failed"
        ended = _scontrol_state(self.job_id)
        return "cancelled" if ended == "CANCELLED" else "failed"

    def progress(self) -> dict[str, tuple[int, int]]:
        try:
            stages = json.loads(self._file("progress.json") or "{}").get("stages", {})
        except ValueError:
            return {}
        return {k: (int(v[0]), int(v[1])) for k, v in stages.items()}

    def error(self) -> str:
        """Why the run failed, in one line: the driver's message, or the end of the log."""
        text = (self._file("error.txt") or "").strip()
        if text:
            return text.splitlines()[0]
        try:
            lines = Path(self.log).read_text(errors="replace").strip().splitlines()
        except OSError:
            lines = []
        from engine.execute.slurm import slurm_message

        return slurm_message("\n".join(lines[-5:])) if lines else "no error message"

    def wait(self, timeout: float | None = None, poll: float = 0.5) -> RunResult:
        deadline = None if timeout is None else time.monotonic() + timeout
        while (state := self.status()) not in TERMINAL:
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"batch job {self.job_id} still {state} after {timeout} s")
            time.sleep(poll)
        if state != "done":
            raise EngineError(f"batch job {self.job_id} {state}: {self.error()} (log: {self.log})")
        data = json.loads(self._file("result.json") or "{}")
        if "units" in data:  # a collection run (engine/runs/units.py)
            return UnitsResult.from_json(data)  # type: ignore[return-value]
        return RunResult.from_json(data)

    def cancel(self) -> None:
        subprocess.run(["scancel", self.job_id], capture_output=True, text=True, timeout=60)


def _scontrol_state(job_id: str) -> str | None:
    proc = subprocess.run(
        ["scontrol", "show", "job", job_id], capture_output=True, text=True, timeout=60
    )
    match = re.search(r"JobState=(\w+)", proc.stdout)
    return match.group(1) if match else None


def directives(spec: ClusterSpec, log: str) -> list[str]:
    """The #SBATCH lines of a batch job: one task each for the scheduler and the driver,
    and one per worker, each with `cores` CPUs and `memory`."""
    workers = spec.jobs or spec.max_jobs or 1
    mem_per_cpu = math.ceil(size_bytes(spec.memory) / spec.cores / 2**20)
    lines = [
        f"--job-name={spec.job_name}",
        f"--output={log}",
        f"--ntasks={workers + 2}",
        f"--cpus-per-task={spec.cores}",
        f"--mem-per-cpu={mem_per_cpu}M",
        f"--time={spec.walltime}",
    ]
    if spec.partition:
        lines.append(f"--partition={spec.partition}")
    if spec.account:
        lines.append(f"--account={spec.account}")
    lines += list(spec.job_extra_directives)
    return [f"#SBATCH {line}" for line in lines]


def render_script(template: str, fields: dict[str, str], source: str = "template") -> str:
    def fill(match: re.Match) -> str:
        name = match.group(1)
        if name not in fields:
            raise ConfigError(
                f"{source}: unknown field {{{{ {name} }}}} (known: {', '.join(sorted(fields))})"
            )
        return fields[name]

    return FIELD.sub(fill, template)


def _read_template(spec: ClusterSpec) -> tuple[str, str]:
    path = Path(spec.template).expanduser() if spec.template else TEMPLATE
    try:
        return path.read_text(), str(path)
    except OSError as exc:
        raise ConfigError(f"cluster.template: cannot read {path} ({exc.strerror})") from None


def _input_json(pipeline: Pipeline, input: Any) -> Any:
    """The input as the job gets it: an image's location, or a list of images as given."""
    source = input if input is not None else pipeline.input
    if source is not None and not isinstance(source, str | Path):
        return [str(item) for item in source]
    return str(resolve_input(pipeline, input))


def _roi_json(roi: Any) -> Any:
    if isinstance(roi, RoiSpec):
        return roi.model_dump(mode="json", exclude_none=True)
    return roi


def check_outputs(
    pipeline: Pipeline,
    input: str | Path | None,
    roi: Any,
    overwrite: bool,
    update: bool,
    resume: bool,
    units: dict[str, Any] | None = None,
) -> dict[str, str]:
    """What `run()` would refuse about the outputs, refused here before anything starts:
    a started run cannot report it until it runs. Returns name -> path of each output
    (on a plate: `<unit> <name>` -> path). `units`: the collection selection (roi_table,
    wells, fields, roi_overlap) of a run over a plate, a well, a list or an ROI table."""
    check_flags(overwrite, update, resume)
    if is_units_run(pipeline, input, roi, **_selection(units)):
        return collection_outputs(pipeline, input, roi, overwrite, update, resume, units or {})
    meta, plan = make_plan(pipeline, input, roi)
    ws = resolve_workspace(pipeline, meta, None)  # the config's output_store, if any
    if resume:  # the outputs are the interrupted run's own
        old = find_resumable(ws.output, [o.path for o in plan.outputs])
        check_resumable(old, pipeline.to_dict(), plan, layout_hash(plan))
    else:
        for out in plan.outputs:
            check_output(ws, out, overwrite, update)
    return {out.name: str(ws.output.child(out.path)) for out in plan.outputs}


def _selection(units: dict[str, Any] | None) -> dict[str, Any]:
    keys = ("roi_table", "wells", "fields")
    return {k: (units or {}).get(k) for k in keys}


def submit_batch(
    pipeline: Pipeline,
    spec: ClusterSpec,
    input: str | Path | None = None,
    roi: Any = None,
    overwrite: bool = False,
    update: bool = False,
    resume: bool = False,
    dry_run: bool = False,
    config: str | None = None,
    units: dict[str, Any] | None = None,
) -> BatchRun | str:
    """Submit the run as one batch job; with `dry_run`, return the job script instead.
    `resume` makes the job continue the latest killed or failed run of the same outputs
    (`run(..., resume=True)`), e.g. after the previous job hit its walltime. `units`
    (roi_table, wells, fields, roi_overlap): the job runs a plate, a well, a list of
    images or an ROI table as `ngff-engine run` does, in one allocation."""
    from engine.execute.slurm import (
        base_directory,
        log_directory,
        private_directory,
        require_slurm,
        slurm_message,
    )

    outputs = check_outputs(pipeline, input, roi, overwrite, update, resume, units)
    template, source = _read_template(spec)
    logs = log_directory(spec)
    log_pattern = str(logs / f"{spec.job_name}-%j.out")
    workdir = Path.cwd()
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S")
    runs = base_directory(spec) / "runs"
    if dry_run:
        run_dir = runs / f"{stamp}-XXXXXXXX"
    else:
        require_slurm(("sbatch", "squeue", "scancel"))
        run_dir = private_directory(runs, f"{stamp}-")
    fields = {
        "directives": "\n".join(directives(spec, log_pattern)),
        "workdir": shlex.quote(str(workdir)),
        "python": shlex.quote(spec.python or sys.executable),
        "run_dir": shlex.quote(str(run_dir)),
        "job_name": spec.job_name,
    }
    script = render_script(template, fields, source)
    if dry_run:
        return script
    try:
        logs.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise EngineError(f"cannot create the SLURM log folder {logs}: {exc.strerror}") from None
    run_spec = {
        "config": config or "pipeline",
        "pipeline": pipeline.to_dict(),
        "input": _input_json(pipeline, input),  # as given: the job runs in workdir
        "units": {k: v for k, v in (units or {}).items() if v is not None},
        "roi": _roi_json(roi),
        "overwrite": overwrite,
        "update": update,
        "resume": resume,
        "threads": spec.cores,
        "memory_limit": size_bytes(spec.memory),
        "tls": spec.tls,
    }
    (run_dir / "run.json").write_text(json.dumps(run_spec, indent=1))
    if spec.tls:
        write_certificates(run_dir)
    (run_dir / "job.sbatch").write_text(script)
    proc = subprocess.run(
        ["sbatch", "--parsable", str(run_dir / "job.sbatch")],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=workdir,
    )
    if proc.returncode != 0:
        shutil.rmtree(run_dir, ignore_errors=True)
        raise EngineError(
            f"SLURM refused the batch job: {slurm_message(proc.stderr + proc.stdout)}"
        )
    job_id = proc.stdout.strip().split(";")[0]
    job = {
        "job_id": job_id,
        "log": log_pattern.replace("%j", job_id),
        "outputs": outputs,
        "submitted": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }
    (run_dir / "job.json").write_text(json.dumps(job, indent=1))
    return BatchRun(run_dir)


@in_python_terms
def submit(
    pipeline: Pipeline | str | Path,
    input: str | Path | None = None,
    roi: str | RoiSpec | dict | None = None,
    cluster: ClusterArg = None,
    *,
    batch: bool = False,
    workers: int | None = None,
    scheduler: str | None = None,
    overwrite: bool = False,
    update: bool = False,
    resume: bool = False,
    roi_table: str | None = None,
    wells: list[str] | None = None,
    fields: list[str] | None = None,
    roi_overlap: str = "refuse",
) -> RunHandle:
    """Start a run and return at once.

    `pipeline` is a Pipeline or the path of a YAML config. `cluster` overrides the
    pipeline's `cluster:` section ("local", "slurm", a dict of fields, a ClusterSpec).
    `batch=True` submits the whole run as one SLURM batch job (see slurm/run.sbatch.template);
    otherwise the run goes on in a thread of this process, its workers local or in SLURM jobs.
    `resume=True` continues the latest killed or failed run of the same outputs.
    `input` may be a plate, a well or a list of images, with `wells`/`fields`, and
    `roi_table` runs once per ROI of that table (as `run`; engine/runs/units.py); the
    handle's `wait()` then returns the UnitsResult.
    """
    units = {"roi_table": roi_table, "wells": wells, "fields": fields, "roi_overlap": roi_overlap}
    config = None
    if not isinstance(pipeline, Pipeline):
        config = str(pipeline)
        pipeline = Pipeline.from_yaml(pipeline)
    if batch:
        spec = resolve_cluster(pipeline.cluster, cluster)
        if workers is not None or scheduler is not None:
            raise ConfigError("a batch job starts its own workers: drop --workers/--scheduler")
        result = submit_batch(
            pipeline,
            spec,
            input,
            roi,
            overwrite=overwrite,
            update=update,
            resume=resume,
            config=config,
            units=units,
        )
        assert isinstance(result, BatchRun)
        return result
    outputs = check_outputs(pipeline, input, roi, overwrite, update, resume, units)
    spec = resolve_cluster(pipeline.cluster, cluster)
    if spec.kind == "slurm" and scheduler is None:
        import engine.execute.slurm  # noqa: F401  (imports dask_jobqueue in the main thread)
    return ThreadRun(
        pipeline,
        outputs,
        input=input,
        roi=roi,
        workers=workers,
        scheduler=scheduler,
        overwrite=overwrite,
        update=update,
        resume=resume,
        cluster=cluster,
        **({k: v for k, v in units.items() if v is not None} if is_units_run(
            pipeline, input, roi, roi_table, wells, fields) else {}),
    )  # fmt: skip


def find_run(run: str | Path, shared_directory: str | None = None) -> BatchRun:
    """A batch run by its folder, or by its SLURM job id (looked up under the shared folder)."""
    path = Path(run).expanduser()
    if path.is_dir():
        return BatchRun(path)
    if str(run).isdigit():
        runs = Path(shared_directory or "~/.ngff-engine").expanduser() / "runs"
        for job_file in sorted(runs.glob("*/job.json")):
            try:
                if json.loads(job_file.read_text()).get("job_id") == str(run):
                    return BatchRun(job_file.parent)
            except (OSError, ValueError):
                continue
        raise EngineError(f"no submitted run with job id {run} under {runs}")
    raise EngineError(f"{run}: no such run folder (give the folder or the job id)")
