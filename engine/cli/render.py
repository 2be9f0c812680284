"""What the command prints: results, tables, progress bars. Formatting only.

rich is imported when something is first printed with it, not with this module: it
took 0.07 s of every command's start, and a `--json` run into a pipe or a file prints
its JSON as rich would, without it (`LazyConsole.print_json`).
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from engine.plan.report import human_bytes

if TYPE_CHECKING:
    from rich.console import Console
    from rich.progress import Progress
    from rich.table import Table

# rich colours output that is not a terminal when one of these is set
_COLOUR_SETTINGS = ("FORCE_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE")


class LazyConsole:
    """A rich `Console(**settings)`, made on first use."""

    def __init__(self, **settings: Any) -> None:
        self._settings = settings
        self._console: Console | None = None

    @property
    def rich(self) -> Console:
        if self._console is None:
            from rich.console import Console

            self._console = Console(**self._settings)
        return self._console

    def __getattr__(self, name: str) -> Any:
        return getattr(self.rich, name)

    def print_json(self, text: str) -> None:
        """`Console.print_json(text)`: without rich when rich would print it plain (not
        to a terminal, no colours asked for): indented by 2, not ASCII-escaped, whole
        lines (tests/test_cold_start.py compares the two)."""
        stream = sys.stderr if self._settings.get("stderr") else sys.stdout
        if self._console is not None or stream.isatty() or _colour_asked():
            self.rich.print_json(text)
            return
        stream.write(json.dumps(json.loads(text), indent=2, ensure_ascii=False) + "\n")


def _colour_asked() -> bool:
    return any(os.environ.get(name) for name in _COLOUR_SETTINGS)


console = LazyConsole(stderr=True)
out = LazyConsole(soft_wrap=True)  # lines are not cut at 80 columns in a pipe or a log


def progress_bars(rate: bool = True) -> Progress:
    """One bar per stage: chunks done of all, rate (unless not `rate`: an import's), time
    so far and left."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    from engine.cli.rate_column import RateColumn

    columns = (
        TextColumn("{task.description:<24}"),
        BarColumn(),
        MofNCompleteColumn(),
        *([RateColumn()] if rate else []),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    return Progress(*columns, console=console.rich, transient=False)


def progress_callback(progress: Progress) -> Callable[[str, int], Callable[[int], None]]:
    def start(stage: str, total: int) -> Callable[[int], None]:
        task = progress.add_task(stage, total=total)
        return lambda n: progress.advance(task, n)

    return start


def print_result(result: Any) -> None:
    out.print(
        f"run {result.run_id} on {result.image} ROI {result.roi} in {result.seconds:.1f} s, "
        f"{result.tasks_done} chunk tasks"
    )
    for name, path in result.outputs.items():
        objects = f" ({result.labels[name]} objects)" if name in result.labels else ""
        if name in result.objects_in_output:
            objects = (
                f" ({result.labels[name]} objects in this ROI, "
                f"{result.objects_in_output[name]} in the output)"
            )
        reused = " (reused: same config and ROI)" if name in result.reused else ""
        out.print(f"  {name}: {path}{objects}{reused}")
    for name, found in result.evaluations.items():
        before = result.previous_evaluations.get(name)
        text = scores(found) if before is None else score_change(before[1], found, before[0])
        out.print(f"  {name}: {text}", highlight=False)
        if name in result.previews:
            out.print(f"    preview: {result.previews[name]}", highlight=False)
    if result.peak_worker_bytes:
        peak = max(result.peak_worker_bytes.values())
        out.print(
            f"  worker memory: peak {human_bytes(peak)}, "
            f"projected {human_bytes(result.projected_worker_bytes)}"
        )
    total: dict[str, float] = {}
    for stage in result.stages:
        for part, seconds in stage.cpu.items():
            total[part] = total.get(part, 0.0) + seconds
    if total:
        out.print(f"  {cpu_text(total)[2:]}", highlight=False)


def print_units(result: Any) -> None:
    """A run over several images or ROIs: one line per unit, then the totals."""
    for unit, one in result.results:
        objects = ", ".join(f"{n} {c} objects" for n, c in one.labels.items())
        out.print(
            f"{unit.label}: run {one.run_id}, {one.tasks_done} chunk tasks, "
            f"{one.seconds:.1f} s{'; ' + objects if objects else ''}",
            highlight=False,
        )
    for name, path in result.plate_tables.items():
        out.print(f"plate table {name}: {path}", highlight=False)
    total = ", ".join(f"{n} {c} objects" for n, c in result.labels.items())
    out.print(
        f"{len(result.results)} units in {result.seconds:.1f} s, {result.tasks_done} chunk "
        f"tasks{'; ' + total if total else ''}",
        highlight=False,
    )
    busy = result.occupancy
    if busy.threads and busy.tasks:
        out.print(
            f"  workers busy {100 * busy.busy_fraction:.0f}% of {busy.threads} threads x "
            f"{busy.seconds:.1f} s; driver CPU {result.driver_cpu:.1f} s",
            highlight=False,
        )


def print_collection_plan(found: Any) -> None:
    """`plan` over a collection: one line per unit (tasks, stages, projected worker
    memory, what a run would refuse), then the totals."""
    for k, unit_plan in enumerate(found.plans):
        plan = unit_plan.plan
        reused = f"; reused: {', '.join(o.path for o in plan.reused)}" if plan.reused else ""
        out.print(
            f"{unit_plan.unit.label}: ROI {plan.roi}, {plan.task_count} chunk tasks in "
            f"{len(plan.stages)} stages, projected worker memory "
            f"{human_bytes(unit_plan.projected_bytes)}{reused}",
            highlight=False,
            markup=False,
            soft_wrap=True,
        )
        for refusal in found.refusals.get(k, []):
            out.print(f"  run would refuse: {refusal}", highlight=False, markup=False)
    images = len({p.unit.image.path for p in found.plans})
    out.print(
        f"total: {len(found.plans)} units ({images} image{'s' if images != 1 else ''}), "
        f"{found.tasks} chunk tasks, "
        f"projected worker memory {human_bytes(found.projected_bytes)} (the largest unit's), "
        f"planned in {found.seconds:.2f} s",
        highlight=False,
        markup=False,
    )
    if found.refusals:
        out.print("(outputs exist: add --update or --overwrite)", highlight=False, markup=False)


def print_collection_status(found: dict[str, Any]) -> None:
    """`status` of a plate (a well, a glob): each unit's latest run, then the totals."""
    width = max((len(r["unit"]) for r in found["units"]), default=4)
    for row in found["units"]:
        run = f"  run {row['run_id']}" if row["run_id"] else ""
        out.print(
            f"{row['unit']:<{width}}  {row['state']:<11}  {row['done']}/{row['tasks']} "
            f"chunk tasks{run}",
            highlight=False,
            markup=False,
        )
        if row.get("error") and row["state"] != "completed":
            out.print(f"  error: {row['error']}", highlight=False, markup=False, soft_wrap=True)
    states = ", ".join(f"{n} {state}" for state, n in found["states"].items())
    out.print(
        f"total: {len(found['units'])} units ({states}); {found['done']}/{found['tasks']} "
        "chunk tasks",
        highlight=False,
        markup=False,
    )


def scores(s: Any) -> str:
    return (
        f"Dice {s.dice:.4f}, IoU {s.iou:.4f}; objects at IoU 0.5: precision {s.precision:.4f}, "
        f"recall {s.recall:.4f}, F1 {s.f1:.4f} ({s.true_positives} matched, "
        f"{s.predicted_objects} predicted, {s.reference_objects} in the reference)"
    )


def score_change(old: Any, new: Any, previous: str) -> str:
    """The scores of a new version next to the previous version's on the same ROI."""
    pairs = [
        (name, getattr(old, key), getattr(new, key))
        for name, key in (
            ("Dice", "dice"),
            ("IoU", "iou"),
            ("precision", "precision"),
            ("recall", "recall"),
            ("F1", "f1"),
        )
    ]
    return (
        ", ".join(f"{n} {a:.4f} -> {b:.4f}" for n, a, b in pairs)
        + f" ({previous} -> this version; {new.true_positives} matched, "
        f"{new.predicted_objects} predicted, {new.reference_objects} in the reference)"
    )


def print_info(path: str, info: dict[str, Any]) -> None:
    from rich.table import Table

    meta = info["image"]
    axes = ", ".join(
        f"{a['name']} ({', '.join(v for v in (a.get('type'), a.get('unit')) if v)})"
        for a in meta["axes"]
    )
    out.print(f"[bold]{path}[/]  OME-Zarr {meta['version']}  axes {axes}", highlight=False)
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
    scored = {t["name"]: t["scores"] for t in info["tables"] if t.get("scores")}
    for group in info["versions"]:
        out.print(f"versions of {group['output']}:", highlight=False)
        for v in group["versions"]:
            change = f" (from {v['previous']}: {v['changed']})" if v.get("previous") else ""
            out.print(f"  v{v['number']} {v['name']}{change}", highlight=False, markup=False)
            for roi, row in scored.get(v["name"], {}).items():
                out.print(
                    f"      {roi}: Dice {row['dice']:.4f}, IoU {row['iou']:.4f}, "
                    f"F1 {row['f1']:.4f}",
                    highlight=False,
                    markup=False,
                )
    for roi in info["rois"]:
        box = ", ".join(f"{a}: {r[0]:g}..{r[1]:g}" for a, r in roi["micrometer"].items())
        out.print(f"roi {roi['name']} (tables/{roi['table']}): {box} micrometer", highlight=False)
    return 0


def print_plan(
    plan: Any, rows: list[dict[str, Any]], reused: list[str], seconds: float, projected: int = 0
) -> None:
    from rich.console import Console
    from rich.table import Table

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
        "task memory",
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
            human_bytes(r["task_bytes"]) if "task_bytes" in r else "-",
        )
    Console(width=max(out.width, _table_width(table))).print(table)
    if projected:
        out.print(
            f"projected worker memory (one thread): {human_bytes(projected)}; a task: its "
            "largest box through its op chain (task memory)",
            highlight=False,
        )
    if reused:
        out.print(f"reused as stored (same config and ROI): {', '.join(reused)}")


def _table_width(table: Table) -> int:
    """Columns wide enough for every cell and header (rich otherwise cuts them to the
    terminal, or to 80 columns when the output is not a terminal)."""
    widths = [
        max([len(str(c.header)), *(len(str(cell)) for cell in c._cells)]) for c in table.columns
    ]
    return max(sum(w + 3 for w in widths) + 1, len(str(table.title or "")))


def cpu_text(parts: dict[str, float] | None) -> str:
    """'; CPU 1.20 s: compute 0.90, decode 0.10, ...' (engine/core/cpu.py), or nothing."""
    if not parts:
        return ""
    shown = ", ".join(f"{name} {seconds:.2f}" for name, seconds in parts.items())
    return f"; CPU {sum(parts.values()):.2f} s: {shown}"


def print_image_runs(image: str, runs: list[dict[str, Any]]) -> None:
    if not runs:
        out.print(f"{image}: no runs recorded", highlight=False, markup=False)
        return
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
        if r.get("roi"):
            box = r["roi"]
            ranges = ", ".join(f"{a}:{b}" for a, b in zip(box["start"], box["stop"], strict=True))
            out.print(f"  ROI [{ranges}] (level {box.get('level', 0)})", highlight=False)
        ended = f" -> {r['ended']}" if r.get("ended") else ""
        out.print(
            f"  {r.get('started')}{ended}; {counts}", highlight=False, markup=False, soft_wrap=True
        )
        for name, row in r.get("stages", {}).items():
            timing = "running" if row.get("running") else f"{row.get('seconds', 0):.1f} s"
            out.print(
                f"  {name:<24} {row.get('done', 0) + row.get('skipped', 0)}/{row.get('tasks')} "
                f"({row.get('skipped', 0)} skipped) {timing}{cpu_text(row.get('cpu'))}",
                highlight=False,
                markup=False,
            )
        if r.get("error"):
            out.print(f"  error: {r['error']}", highlight=False, markup=False, soft_wrap=True)
