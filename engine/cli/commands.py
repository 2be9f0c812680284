"""The `ngff-engine` command: parse, call the API, print. No logic of its own.

Errors the user can fix print one line and exit 2; anything else prints one
line and exits 1; `--debug` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from rich.text import Text

from engine.core.errors import ConfigError, EngineError
from engine.core.pipeline import Pipeline
from engine.core.version import __version__
from engine.execute.cluster import resolve_cluster
from engine.io.metadata import read_image
from engine.io.rois import parse_cli_roi
from engine.plan.compiler import human_bytes, summarize
from engine.runs.runner import make_plan, resolve_input, run

console = Console(stderr=True)
out = Console()


def _ints(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"'{text}' is not a comma-separated list of integers"
        ) from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ngff-engine", description="ROI-scoped pipelines over OME-Zarr images on dask."
    )
    parser.add_argument("--version", action="version", version=f"ngff-engine {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("sample", help="write a synthetic 3D nuclei image with true labels")
    p.add_argument("out", help="path of the new .zarr")
    p.add_argument("--shape", type=_ints, default=(128, 512, 512), help="Z,Y,X or Y,X")
    p.add_argument("--chunks", type=_ints, default=None, help="chunk sizes, as --shape")
    p.add_argument("--ngff", choices=["0.4", "0.5"], default="0.5")
    p.add_argument("--seed", type=int, default=0)

    p = sub.add_parser("info", help="describe an OME-Zarr image and its outputs")
    p.add_argument("path", help="the image: a path or URL (http(s)://, s3://)")
    p.add_argument(
        "--output",
        default=None,
        help="output store (path or URL) for outputs and run state, when not the image",
    )
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("validate", help="check a pipeline config (and its image, if present)")
    p.add_argument("config")
    p.add_argument("--input", default=None)
    p.add_argument(
        "--output",
        default=None,
        help="output store (path or URL) for outputs and run state, when not the image",
    )

    for name, text in (("plan", "show the chunk tasks a run would do"), ("run", "run a pipeline")):
        p = sub.add_parser(name, help=text)
        p.add_argument("config")
        p.add_argument("--input", default=None, help="image path or URL (overrides the config)")
        p.add_argument("--roi", default=None, help="ROI name from the config, or z0:z1,y0:y1,x0:x1")
        p.add_argument(
            "--output",
            default=None,
            help="output store (path or URL) for outputs and run state, when not the image",
        )
        p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--workers", type=int, default=None, help="local workers (default: cores)")
    p.add_argument("--scheduler", default=None, help="address of an existing dask scheduler")
    _output_mode(p)
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue the latest killed or failed run of these outputs, skipping done chunks",
    )
    p.add_argument(
        "--cluster",
        choices=["local", "slurm"],
        default=None,
        help="where workers run (default: the config's cluster.kind, else local)",
    )
    p.add_argument(
        "--priority-roi",
        default=None,
        help="ROI (name or z0:z1,y0:y1,x0:x1) every stage computes first, to look at early "
        "(default: a config ROI with preview: true)",
    )
    _cluster_flags(p)

    p = sub.add_parser("submit", help="submit a run as one SLURM batch job")
    p.add_argument("config")
    p.add_argument("--input", default=None, help="image path (overrides the config)")
    p.add_argument("--roi", default=None, help="ROI name from the config, or z0:z1,y0:y1,x0:x1")
    _output_mode(p)
    p.add_argument("--dry-run", action="store_true", help="print the job script, submit nothing")
    p.add_argument("--wait", action="store_true", help="wait for the job; exit with its state")
    p.add_argument(
        "--resume",
        action="store_true",
        help="the job continues the latest killed or failed run of these outputs",
    )
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--template", default=None, help="sbatch template (default slurm/)")
    _cluster_flags(p)

    p = sub.add_parser(
        "diff", help="compare two label images (e.g. versions): the evaluate scores, B as reference"
    )
    p.add_argument("path", help="the image (.zarr): a path or URL")
    p.add_argument(
        "--output",
        default=None,
        help="output store (path or URL) for outputs and run state, when not the image",
    )
    p.add_argument("a", help="label image to score, as in labels/A")
    p.add_argument("b", help="reference label image, as in labels/B")
    p.add_argument("--roi", default=None, help="z0:z1,y0:y1,x0:x1 in pixels (default: all)")
    p.add_argument("--workers", type=int, default=None, help="local workers (default: cores)")
    p.add_argument("--scheduler", default=None, help="address of an existing dask scheduler")
    p.add_argument("--json", action="store_true", help="machine-readable output")

    p = sub.add_parser("table", help="export a measurement table (tables/NAME) as CSV")
    p.add_argument("path", help="the image (.zarr)")
    p.add_argument("name", help="table name, as in tables/NAME")
    p.add_argument("--csv", required=True, help="CSV file to write ('-' for standard output)")

    p = sub.add_parser("preview", help="PNG of an ROI with label outlines, to look at")
    p.add_argument("path", help="the image (.zarr): a path or URL")
    p.add_argument(
        "--output",
        default=None,
        help="output store (path or URL) for outputs and run state, when not the image",
    )
    p.add_argument(
        "--roi", default=None, help="ROI name from the image, or z0:z1,y0:y1,x0:x1 (at --level)"
    )
    p.add_argument("--labels", default=None, help="label image to outline, as in labels/NAME")
    p.add_argument("--out", default="preview.png", help="PNG to write (default preview.png)")
    p.add_argument("--level", type=int, default=0, help="resolution level (default 0)")
    view = p.add_mutually_exclusive_group()
    view.add_argument("--plane", type=int, default=None, help="one z plane (index at --level)")
    view.add_argument("--max", action="store_true", help="maximum projection over z (default)")

    p = sub.add_parser(
        "status", help="runs of an image (.zarr), or state and progress of a submitted batch run"
    )
    p.add_argument("run", help="an image (.zarr): its runs; or a batch run folder or SLURM job id")
    p.add_argument("--shared-dir", default=None, help="where runs are (default ~/.ngff-engine)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    return parser


def _output_mode(p: argparse.ArgumentParser) -> None:
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    mode.add_argument("--update", action="store_true", help="write this ROI into existing outputs")


# CLI flag -> ClusterSpec field; they override the config's `cluster:` section.
CLUSTER_FLAGS = {
    "partition": "partition",
    "account": "account",
    "jobs": "jobs",
    "min_jobs": "min_jobs",
    "max_jobs": "max_jobs",
    "cores": "cores",
    "processes": "processes",
    "memory": "memory",
    "walltime": "walltime",
    "lifetime": "lifetime",
    "log_dir": "log_directory",
    "shared_dir": "shared_directory",
    "template": "template",
}


def _cluster_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("SLURM (override the config's cluster: section)")
    g.add_argument("--partition", "--queue", dest="partition", default=None, help="partition")
    g.add_argument("--account", default=None, help="account to charge (-A)")
    g.add_argument("--jobs", type=int, default=None, help="worker jobs (fixed size)")
    g.add_argument("--min-jobs", type=int, default=None, help="adaptive: fewest worker jobs")
    g.add_argument("--max-jobs", type=int, default=None, help="adaptive: most worker jobs")
    g.add_argument("--cores", type=int, default=None, help="CPUs per worker job")
    g.add_argument("--processes", type=int, default=None, help="dask workers per job")
    g.add_argument("--memory", default=None, help="memory per worker job, e.g. 4GiB")
    g.add_argument("--walltime", default=None, help="time limit per job, e.g. 01:00:00")
    g.add_argument(
        "--lifetime",
        default=None,
        help="adaptive: a worker retires after this and a new job replaces it, e.g. 55m "
        "(default: the walltime less a margin)",
    )
    g.add_argument("--log-dir", default=None, help="SLURM log folder")
    g.add_argument(
        "--shared-dir", default=None, help="folder the compute nodes see (default ~/.ngff-engine)"
    )
    g.add_argument(
        "--no-tls", action="store_true", help="plain TCP between scheduler and workers (unsafe)"
    )


def _cluster_overrides(args: argparse.Namespace) -> dict[str, Any]:
    overrides = {
        field: getattr(args, flag)
        for flag, field in CLUSTER_FLAGS.items()
        if getattr(args, flag, None) is not None
    }
    if getattr(args, "no_tls", False):
        overrides["tls"] = False
    if getattr(args, "cluster", None):
        overrides["kind"] = args.cluster
    return overrides


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except EngineError as exc:
        if args.debug:
            raise
        console.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
        return 2
    except KeyboardInterrupt:
        console.print("[bold red]interrupted[/]")
        return 130
    except Exception as exc:
        if args.debug:
            raise
        console.print(
            f"[bold red]internal error:[/] {type(exc).__name__}: {exc} (rerun with --debug)",
            highlight=False,
            soft_wrap=True,
        )
        return 1


def cmd_sample(args: argparse.Namespace) -> int:
    from engine.io.sample_zarr import write_sample

    path = write_sample(args.out, args.shape, args.chunks, args.ngff, args.seed)
    out.print(
        f"wrote {path} (shape {','.join(map(str, args.shape))}, NGFF {args.ngff}; "
        "labels/truth, labels/annotations, ROIs train and test)"
    )
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    from engine.io.inventory import describe

    info = describe(args.path, args.output)
    if args.json:
        out.print_json(json.dumps(info))
        return 0
    meta = info["image"]
    out.print(f"[bold]{args.path}[/]  OME-Zarr {meta['version']}  axes {meta['axes']}")
    table = Table("level", "shape", "chunks", "dtype", "scale")
    for lv in meta["levels"]:
        table.add_row(
            lv["path"], str(lv["shape"]), str(lv["chunks"]), lv["dtype"], str(lv["scale"])
        )
    out.print(table)
    for kind in ("labels", "results"):
        for item in info[kind]:
            runs = item.get("runs", 0)
            out.print(
                f"{kind}/{item['name']}: {item['dtype']} {item['levels']} levels, {runs} run(s)"
            )
    for item in info["tables"]:
        region = f" of {item['region']}" if item["region"] else ""
        out.print(
            f"tables/{item['name']}: {item['type']}{region}, {item['rows']} rows, "
            f"{item['runs']} run(s)"
        )
    for item in info["models"]:
        kind = item.get("estimator", "?").rsplit(".", 1)[-1]
        out.print(
            f"{item['path']}: {kind}, classes {item.get('classes')}, "
            f"{item.get('n_features')} features, halo {item.get('halo')}",
            highlight=False,
        )
    for group in info["versions"]:
        out.print(f"versions of {group['output']}:", highlight=False)
        for v in group["versions"]:
            change = f" (from {v['previous']}: {v['changed']})" if v.get("previous") else ""
            out.print(f"  v{v['number']} {v['name']}{change}", highlight=False, markup=False)
    for roi in info["rois"]:
        box = ", ".join(f"{a}: {r[0]:g}..{r[1]:g}" for a, r in roi["micrometer"].items())
        out.print(f"roi {roi['name']} (tables/{roi['table']}): {box} micrometer", highlight=False)
    return 0


def _load(args: argparse.Namespace) -> Pipeline:
    return Pipeline.from_yaml(args.config)


def _roi(args: argparse.Namespace, pipeline: Pipeline, given: str | None = None) -> Any:
    roi = args.roi if given is None else given
    if roi is None or roi in pipeline.rois:
        return roi
    if ":" in roi:
        return parse_cli_roi(roi, read_image(resolve_input(pipeline, args.input)))
    return roi


def _where(args: argparse.Namespace) -> dict[str, Any]:
    """The output store flag, as `run`/`make_plan` take it."""
    return {"output": args.output} if getattr(args, "output", None) else {}


def cmd_validate(args: argparse.Namespace) -> int:
    pipeline = _load(args)
    pipeline.check_complete()
    path = args.input or pipeline.input
    checked = "config"
    if path is not None and (
        not (where := resolve_input(pipeline, path)).is_local or where.exists()
    ):
        for roi in [None, *pipeline.rois]:
            make_plan(pipeline, path, roi, **_where(args))
        checked = f"config, image {path} and {len(pipeline.rois)} ROI(s)"
    outputs = [f"{s.output.kind}/{s.output.name}" for s in pipeline.steps if s.output]
    out.print(f"ok: {checked}; {len(pipeline.steps)} steps; outputs {', '.join(outputs)}")
    return 0


def cmd_plan(args: argparse.Namespace) -> int:
    import time

    pipeline = _load(args)
    started = time.perf_counter()
    _, plan = make_plan(pipeline, args.input, _roi(args, pipeline), **_where(args))
    seconds = time.perf_counter() - started
    rows = summarize(plan)
    reused = [o.path for o in plan.reused]
    if args.json:
        data = {"roi": str(plan.roi), "plan_seconds": seconds, "stages": rows, "reused": reused}
        out.print_json(json.dumps(data))
        return 0
    table = Table(title=f"plan for ROI {plan.roi} ({plan.task_count} tasks, {seconds:.3f} s)")
    for col in (
        "stage",
        "kind",
        "tasks",
        "chunks read",
        "chunks written",
        "read",
        "written",
        "halo",
    ):
        table.add_column(col)
    for r in rows:
        halo = ",".join(f"{k}{v}" for k, v in r["halo"].items() if v) or "-"
        table.add_row(
            r["stage"],
            r["kind"],
            str(r["tasks"]),
            str(r["chunks_read"]),
            str(r["chunks_written"]),
            human_bytes(r["bytes_read"]),
            human_bytes(r["bytes_written"]),
            halo,
        )
    out.print(table)
    if reused:
        out.print(f"reused as stored (same config and ROI): {', '.join(reused)}")
    return 0


def _progress_callback(progress: Progress) -> Callable[[str, int], Callable[[int], None]]:
    def start(stage: str, total: int) -> Callable[[int], None]:
        task = progress.add_task(stage, total=total)
        return lambda n: progress.advance(task, n)

    return start


def cmd_run(args: argparse.Namespace) -> int:
    pipeline = _load(args)
    roi = _roi(args, pipeline)
    overrides = _cluster_overrides(args)
    cluster = resolve_cluster(pipeline.cluster, overrides)
    if cluster.kind != "slurm" and set(overrides) - {"kind"}:
        flags = ", ".join(f"--{k.replace('_', '-')}" for k in sorted(set(overrides) - {"kind"}))
        raise ConfigError(f"{flags}: SLURM options need --cluster slurm (or cluster.kind: slurm)")
    if cluster.kind == "slurm" and args.workers is not None and args.scheduler is None:
        raise ConfigError("--workers is for --cluster local; SLURM runs use --jobs")
    kwargs = dict(
        input=args.input,
        roi=roi,
        workers=args.workers,
        overwrite=args.overwrite,
        update=args.update,
        scheduler=args.scheduler,
        cluster=overrides or None,
        resume=args.resume,
        priority_roi=_roi(args, pipeline, args.priority_roi) if args.priority_roi else None,
        announce=None if args.json or args.quiet else lambda t: console.print(t, highlight=False),
        **_where(args),
    )
    if args.workers is not None and args.workers < 1:
        raise ConfigError(f"--workers must be at least 1, got {args.workers}")
    if args.quiet or args.json:
        result = run(pipeline, **kwargs)
    else:
        columns = (
            TextColumn("{task.description:<24}"),
            BarColumn(),
            MofNCompleteColumn(),
            RateColumn(),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
        )
        with Progress(*columns, console=console, transient=False) as progress:
            result = run(pipeline, progress=_progress_callback(progress), **kwargs)
    if args.json:
        out.print_json(json.dumps(result.to_json()))
        return 0
    _print_result(result)
    return 0


def _print_result(result: Any) -> None:
    out.print(
        f"run {result.run_id} on {result.image} ROI {result.roi} in {result.seconds:.1f} s, "
        f"{result.tasks_done} chunk tasks"
    )
    for name, path in result.outputs.items():
        objects = f" ({result.labels[name]} objects)" if name in result.labels else ""
        reused = " (reused: same config and ROI)" if name in result.reused else ""
        out.print(f"  {name}: {path}{objects}{reused}")
    for name, found in result.evaluations.items():
        out.print(f"  {name}: {_scores(found)}", highlight=False)
        if name in result.previews:
            out.print(f"    preview: {result.previews[name]}", highlight=False)
    if result.peak_worker_bytes:
        peak = max(result.peak_worker_bytes.values())
        out.print(
            f"  worker memory: peak {human_bytes(peak)}, "
            f"projected {human_bytes(result.projected_worker_bytes)}"
        )


class RateColumn(ProgressColumn):
    """Chunks per second of a stage."""

    def render(self, task: Any) -> Text:
        speed = task.finished_speed or task.speed
        return Text("" if speed is None else f"{speed:.1f}/s")


def _scores(s: Any) -> str:
    return (
        f"Dice {s.dice:.4f}, IoU {s.iou:.4f}; objects at IoU 0.5: precision {s.precision:.4f}, "
        f"recall {s.recall:.4f}, F1 {s.f1:.4f} ({s.true_positives} matched, "
        f"{s.predicted_objects} predicted, {s.reference_objects} in the reference)"
    )


def cmd_diff(args: argparse.Namespace) -> int:
    from engine.runs.evaluation import diff

    if args.workers is not None and args.workers < 1:
        raise ConfigError(f"--workers must be at least 1, got {args.workers}")
    found = diff(args.path, args.a, args.b, args.roi, args.workers, args.scheduler, args.output)
    if args.json:
        data = {"labels": f"labels/{args.a}", "reference": f"labels/{args.b}", **found.to_json()}
        out.print_json(json.dumps(data))
        return 0
    out.print(f"labels/{args.a} against labels/{args.b}: {_scores(found)}", highlight=False)
    return 0


def cmd_submit(args: argparse.Namespace) -> int:
    from engine.runs.submit import submit_batch

    pipeline = _load(args)
    roi = _roi(args, pipeline)
    spec = resolve_cluster(pipeline.cluster, {**_cluster_overrides(args), "kind": "slurm"})
    handle = submit_batch(
        pipeline,
        spec,
        args.input,
        roi,
        overwrite=args.overwrite,
        update=args.update,
        resume=args.resume,
        dry_run=args.dry_run,
        config=args.config,
    )
    if isinstance(handle, str):
        out.print(handle, end="", highlight=False, markup=False, soft_wrap=True)
        return 0
    if args.json and not args.wait:
        out.print_json(
            json.dumps({"job_id": handle.job_id, "log": handle.log, "run": str(handle.run_dir)})
        )
        return 0
    if not args.json:
        out.print(f"submitted batch job {handle.job_id}", highlight=False)
        out.print(f"  log: {handle.log}", highlight=False, soft_wrap=True)
        out.print(f"  run: {handle.run_dir}", highlight=False, soft_wrap=True)
    if not args.wait:
        return 0
    try:
        result = handle.wait()
    except EngineError as exc:
        console.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
        return handle.exit_code or 1
    if args.json:
        out.print_json(json.dumps({"job_id": handle.job_id, **result.to_json()}))
        return 0
    _print_result(result)
    return 0


def _is_zarr(path: str) -> bool:
    """An image or output store (local or a URL), not a batch run folder or job id."""
    from engine.io.location import Location

    where = Location.parse(path)
    if not where.is_local:
        return True
    return where.local_path.is_dir() and any(where.exists(f) for f in ("zarr.json", ".zgroup"))


def cmd_status(args: argparse.Namespace) -> int:
    from engine.runs.submit import find_run

    if _is_zarr(args.run):
        return _image_status(args)

    handle = find_run(args.run, args.shared_dir)
    state = handle.status()
    progress = handle.progress()
    if args.json:
        data = {
            "job_id": handle.job_id,
            "state": state,
            "log": handle.log,
            "run": str(handle.run_dir),
            "progress": progress,
            "outputs": handle.outputs,
        }
        if state in ("failed", "cancelled"):
            data["error"] = handle.error()
        out.print_json(json.dumps(data))
        return 0
    out.print(f"batch job {handle.job_id}: {state}", highlight=False)
    for stage, (done, total) in progress.items():
        out.print(f"  {stage:<24} {done}/{total}", highlight=False)
    if state in ("failed", "cancelled"):
        out.print(f"  error: {handle.error()}", highlight=False, soft_wrap=True)
    out.print(f"  log: {handle.log}", highlight=False, soft_wrap=True)
    for name, path in handle.outputs.items():
        out.print(f"  {name}: {path}", highlight=False, soft_wrap=True)
    return 0


def cmd_preview(args: argparse.Namespace) -> int:
    from engine.io.preview import preview

    result = preview(
        args.path, args.out, args.roi, args.labels, args.plane, args.level, output=args.output
    )
    height, width = result.rgb.shape[:2]
    outlines = f", {result.n_labels} label(s) of {result.labels}" if result.labels else ""
    out.print(
        f"wrote {args.out} ({width}x{height} px, ROI {result.roi}, {result.mode}{outlines})",
        highlight=False,
        soft_wrap=True,
    )
    return 0


def _image_status(args: argparse.Namespace) -> int:
    """The run records in an image's `_engine/runs`, oldest first."""
    from engine.state.records import list_runs

    runs = list_runs(args.run)
    if args.json:
        out.print_json(json.dumps({"image": args.run, "runs": runs}))
        return 0
    if not runs:
        out.print(f"{args.run}: no runs recorded", highlight=False, markup=False)
        return 0
    for r in runs:
        counts = (
            f"{r.get('chunks_done', 0)} done, {r.get('chunks_skipped', 0)} skipped, "
            f"{r.get('chunks_failed', 0)} failed of {r.get('tasks', '?')} chunk tasks"
        )
        out.print(
            f"{r.get('run_id', '?')}  {r.get('state', '?')}  {', '.join(r.get('outputs', []))}",
            highlight=False,
            markup=False,
            soft_wrap=True,
        )
        if r.get("reused"):
            out.print(
                f"  reused: {', '.join(r['reused'])}", highlight=False, markup=False, soft_wrap=True
            )
        ended = f" -> {r['ended']}" if r.get("ended") else ""
        out.print(
            f"  {r.get('started')}{ended}; {counts}", highlight=False, markup=False, soft_wrap=True
        )
        for name, row in r.get("stages", {}).items():
            timing = "running" if row.get("running") else f"{row.get('seconds', 0):.1f} s"
            out.print(
                f"  {name:<24} {row.get('done', 0) + row.get('skipped', 0)}/{row.get('tasks')} "
                f"({row.get('skipped', 0)} skipped) {timing}",
                highlight=False,
                markup=False,
            )
        if r.get("error"):
            out.print(f"  error: {r['error']}", highlight=False, markup=False, soft_wrap=True)
    return 0


def cmd_table(args: argparse.Namespace) -> int:
    import os

    from engine.io.tables import export_csv

    if args.csv == "-":
        try:
            export_csv(args.path, args.name, sys.stdout)
        except BrokenPipeError:  # e.g. piped into `head`: stop quietly
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    rows = export_csv(args.path, args.name, args.csv)
    out.print(f"wrote {args.csv} ({rows} rows)", highlight=False, soft_wrap=True)
    return 0


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "sample": cmd_sample,
    "info": cmd_info,
    "validate": cmd_validate,
    "plan": cmd_plan,
    "run": cmd_run,
    "submit": cmd_submit,
    "status": cmd_status,
    "table": cmd_table,
    "diff": cmd_diff,
    "preview": cmd_preview,
}

if __name__ == "__main__":
    sys.exit(main())
