"""The `ngff-engine` command: parse, call the API, print. No logic of its own.

Errors the user can fix print one line and exit 2; anything else prints one
line and exits 1; `--debug` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from engine.cli import transfer
from engine.cli.engine_commands import cmd_stop, engine_status, start_in_background, warm_flag
from engine.cli.parser import LOCAL_OVERRIDES, build_parser, cluster_overrides
from engine.cli.render import (
    console,
    out,
    print_collection_plan,
    print_collection_status,
    print_image_runs,
    print_info,
    print_plan,
    print_result,
    print_units,
    progress_bars,
    progress_callback,
    scores,
)
from engine.cli.stopping import interrupted, joined_roi_values, signals_stop_the_command
from engine.core.errors import (
    COMMAND_LINE,
    ConfigError,
    EngineError,
    OutputConflict,
    os_error_message,
)
from engine.core.pipeline import Pipeline
from engine.execute.placement import resolve_cluster
from engine.io.location import Location
from engine.plan.memory import project_stage, projected_peak
from engine.plan.report import summarize
from engine.runs.outputs import check_output
from engine.runs.planning import make_plan, resolve_input, resolve_workspace
from engine.runs.units import UnitsResult, is_units_run, run


def main(argv: Sequence[str] | None = None) -> int:
    words = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(joined_roi_values(words))
    token = COMMAND_LINE.set(True)
    try:
        with signals_stop_the_command():
            return COMMANDS[args.command](args)
    except EngineError as exc:
        if args.debug:
            raise
        console.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
        return 2
    except KeyboardInterrupt as exc:
        return interrupted(exc)
    except OSError as exc:  # no space, a read-only or forbidden place: the user's to fix
        message = os_error_message(exc)
        if args.debug or message is None:
            return _internal(args, exc)
        console.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
        return 2
    except Exception as exc:
        return _internal(args, exc)
    finally:
        COMMAND_LINE.reset(token)


def escape(text: str) -> str:
    """rich's markup escape, imported with rich when an error is printed."""
    from rich.markup import escape as escape_markup

    return escape_markup(text)


def _internal(args: argparse.Namespace, exc: Exception) -> int:
    """A bug: one line, or the traceback with --debug."""
    if args.debug:
        raise exc
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
    print_info(args.path, info)
    return 0


def _load(args: argparse.Namespace) -> Pipeline:
    return Pipeline.from_yaml(args.config)


def cmd_validate(args: argparse.Namespace) -> int:
    pipeline = _load(args)
    pipeline.check_complete()
    path = args.input or pipeline.input
    checked = "config"
    where = resolve_input(pipeline, path) if path is not None else None
    if where is not None and (not where.is_local or where.exists()):
        for roi in [None, *pipeline.rois]:
            make_plan(pipeline, path, roi, output=args.output)
        checked = f"config, image {path} and {len(pipeline.rois)} ROI(s)"
    outputs = [f"{s.output.kind}/{s.output.name}" for s in pipeline.steps if s.output]
    outputs += [
        f"model _engine/models/{s.params['model']}"
        for s in pipeline.steps
        if s.op == "train_pixel_classifier" and s.params.get("model")
    ]
    written = f"outputs {', '.join(outputs)}" if outputs else "no outputs"
    out.print(f"ok: {checked}; {len(pipeline.steps)} steps; {written}", highlight=False)
    code = pipeline.user_code()
    if code:
        out.print(
            f"imports user code: {', '.join(code)} (a config is code: run only configs you trust)",
            highlight=False,
            markup=False,
            soft_wrap=True,
        )
    return 0


def cmd_plan(args: argparse.Namespace) -> int:
    import time

    pipeline = _load(args)
    if resolve_cluster(pipeline.cluster).kind == "local":
        start_in_background(args)
    units = (args.input, args.roi, args.roi_table, args.wells, args.fields)
    if is_units_run(pipeline, *units):
        return _plan_collection(args, pipeline)
    started = time.perf_counter()
    meta, plan = make_plan(pipeline, args.input, args.roi, output=args.output)
    seconds = time.perf_counter() - started
    rows = summarize(plan)
    for row, stage in zip(rows, plan.stages, strict=True):  # a task's projected peak
        row["task_bytes"] = project_stage(stage).task_bytes
    projected = projected_peak(plan)[0] if plan.stages else 0
    reused = [o.path for o in plan.reused]
    refusals = []
    ws = resolve_workspace(pipeline, meta, args.output, writing=False)
    for output in plan.outputs:  # what `run` without --update/--overwrite would refuse
        try:
            check_output(ws, output, overwrite=False, update=False)
        except OutputConflict as exc:
            refusals.append(str(exc))
    if args.json:
        data = {
            "roi": str(plan.roi),
            "plan_seconds": seconds,
            "stages": rows,
            "projected_worker_bytes": projected,
            "reused": reused,
            "run_refuses": refusals,
        }
        out.print_json(json.dumps(data))
        return 0
    print_plan(plan, rows, reused, seconds, projected)
    for refusal in refusals:
        out.print(f"run would refuse: {refusal}", highlight=False, markup=False)
    if refusals:
        out.print("(outputs exist: add --update or --overwrite)", highlight=False, markup=False)
    return 0


def _plan_collection(args: argparse.Namespace, pipeline: Pipeline) -> int:
    """`plan` over a plate, a well, a list of images or an ROI table: per unit and totals."""
    from engine.runs.collection_report import plan_collection

    if args.output is not None:
        raise ConfigError("--output is for a run on one image")
    found = plan_collection(
        pipeline, args.input, args.roi, args.roi_table, args.wells, args.fields, args.roi_overlap
    )
    if args.json:
        out.print_json(json.dumps(found.to_json()))
        return 0
    print_collection_plan(found)
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    pipeline = _load(args)
    roi = args.roi
    overrides = cluster_overrides(args)
    cluster = resolve_cluster(pipeline.cluster, overrides)
    slurm_only = sorted(set(overrides) - LOCAL_OVERRIDES)
    if cluster.kind != "slurm" and slurm_only:
        flags = ", ".join(f"--{k.replace('_', '-')}" for k in slurm_only)
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
        priority_roi=args.priority_roi,
        warm=warm_flag(args),
        idle_timeout=args.idle_timeout,
        announce=None if args.json or args.quiet else lambda t: console.print(t, highlight=False),
        output=args.output,
        roi_table=args.roi_table,
        wells=args.wells,
        fields=args.fields,
        roi_overlap=args.roi_overlap,
    )
    if args.workers is not None and args.workers < 1:
        raise ConfigError(f"--workers must be at least 1, got {args.workers}")
    if args.quiet or args.json:
        result = run(pipeline, **kwargs)
    else:
        with progress_bars() as progress:
            result = run(pipeline, progress=progress_callback(progress), **kwargs)
    if args.json:
        out.print_json(json.dumps(result.to_json()))
        return 0
    if isinstance(result, UnitsResult):
        print_units(result)
        return 0
    print_result(result)
    return 0


def cmd_diff(args: argparse.Namespace) -> int:
    from engine.runs.evaluation import diff, diff_roi

    if args.workers is not None and args.workers < 1:
        raise ConfigError(f"--workers must be at least 1, got {args.workers}")
    box = diff_roi(args.path, args.a, args.b, args.roi, args.output)
    found = diff(
        args.path,
        args.a,
        args.b,
        args.roi,
        args.workers,
        args.scheduler,
        warm_flag(args),
        args.idle_timeout,
        args.output,
    )
    if args.json:
        data = {
            "labels": f"labels/{args.a}",
            "reference": f"labels/{args.b}",
            "roi": {"name": args.roi, "start": list(box.start), "stop": list(box.stop)},
            **found.to_json(),
        }
        out.print_json(json.dumps(data))
        return 0
    out.print(f"labels/{args.a} against labels/{args.b}: {scores(found)}", highlight=False)
    out.print(f"  scored on ROI {_roi_name(args.roi)}{box}", highlight=False)
    return 0


def _roi_name(name: str | None) -> str:
    """`test ` for a named ROI, `whole image ` for none, nothing for boxes (they print)."""
    if name is None:
        return "whole image "
    return "" if ":" in name else f"{name} "


def cmd_submit(args: argparse.Namespace) -> int:
    from engine.runs.submit import submit_batch

    pipeline = _load(args)
    roi = args.roi
    spec = resolve_cluster(pipeline.cluster, {**cluster_overrides(args), "kind": "slurm"})
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
        units={
            "roi_table": args.roi_table,
            "wells": args.wells,
            "fields": args.fields,
            "roi_overlap": args.roi_overlap,
        },
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
    if isinstance(result, UnitsResult):
        print_units(result)
        return 0
    print_result(result)
    return 0


def _is_zarr(text: str) -> bool:
    """An image or output store (a URL, or a local zarr), not a batch run or job id."""
    if Location.parse(text).scheme != "file":
        return True
    path = Path(text)
    return path.is_dir() and any((path / f).exists() for f in ("zarr.json", ".zgroup"))


def cmd_status(args: argparse.Namespace) -> int:
    from engine.runs.submit import find_run

    if args.run is None:
        return engine_status(args)
    from engine.runs.collection_report import collection_status, is_collection_path

    if args.wells or args.fields or is_collection_path(args.run):
        found = collection_status(args.run, args.wells, args.fields)
        if args.json:
            out.print_json(json.dumps(found))
            return 0
        print_collection_status(found)
        return 0
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

    start_in_background(args)
    result = preview(
        args.path,
        args.out,
        args.roi,
        args.labels,
        args.plane,
        args.level,
        reference=args.reference,
        scale=args.scale,
        projection=args.max,
        output=args.output,
    )
    height, width = result.png.shape[:2]
    view = result.mode
    if result.centre:
        view += " (the ROI's centre)"
    if result.densest:
        view += " (the most labelled pixels)"
    drawn = ""
    if result.counts is not None:
        drawn = ", " + ", ".join(f"{n} {what}" for what, n in result.counts.items())
        drawn += f" of labels/{result.labels} against labels/{args.reference}"
    elif result.classes is not None:
        drawn = f", classes of {result.labels}: " + ", ".join(
            f"{v} {n}" for v, n in result.classes.items()
        )
    elif result.labels:
        drawn = (
            f", {result.n_labels} objects of {result.labels} outlined ({result.in_roi} in the ROI)"
        )
    out.print(
        f"wrote {args.out} ({width}x{height} px, scale {result.scale}, ROI {result.roi}, "
        f"{view}{drawn})",
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
    print_image_runs(args.run, runs)
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
    **transfer.COMMANDS,
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
    "stop": cmd_stop,
}

if __name__ == "__main__":
    sys.exit(main())
