"""Benchmark of the micro-scheduler. Not a test (pytest does not collect it).

    python benchmarks/bench_scheduler.py [--counts 10000,100000] [--workers 2]
                                    [--sizes 64,512,512:128,1024,1024:256,1024,1024]
                                    [--plan-count 1000000] [--out JSON]

Prints, in one run, and writes JSON:
(a) overhead per chunk task of a no-op chain (`function: numpy:asarray`, one tiny chunk
    read and written per task) on 10^4 and 10^5 chunks: the engine's wall time per chunk
    beyond the same chunk work done back to back in one worker and divided over the
    workers, on workers warmed up by a run of 1000 chunks first (their imports of the
    engine and the ops are a cost of starting a worker, paid once, not per chunk); next
    to raw `client.map` of a no-op function over the same count. The driver
    runs in a process of its own (as `ngff-engine run --scheduler` does), which reports
    its peak RSS; and for a plan of about 10^6 chunks (`--plan-count`, 0 to skip), the
    compile time and the driver's peak RSS through the plan and the executor's setup
    (layout hash, memory projection, markers, batches), with nothing run;
(b) time to a preview result: the standard pipeline (configs/nuclei.yaml) on a 64^3 ROI
    of images 256^3, 1024^3 and a 2048x65536x65536 volume, on a running cluster; only
    the chunks around the ROI hold data, nothing else is ever written or read;
(d) an ROI run with the warm engine, from the command's start to its exit
    (benchmarks/bench_warm.py);
(c) peak worker memory of the standard pipeline, gaussian -> Otsu -> label, on samples
    of three sizes (benchmarks/bench_pipeline.py runs it). It grows until the worker's fixed
    budgets are full (the 256 MiB decoded-chunk cache, the heap's free top), then stays.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import zarr
from distributed import Client, LocalCluster

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench_pipeline

from bench_warm import print_warm, warm_roi_latency  # noqa: E402

NOOP = {"steps": [{"name": "copy", "op": "function", "params": {"function": "numpy:asarray"}}]}


def empty_image(path: Path, shape: tuple[int, ...], chunks: tuple[int, ...]) -> Path:
    """An NGFF 0.5 image with one level and no chunk written (reads give zeros)."""
    from engine.io.metadata import Axis
    from engine.io.ngff_write import LevelSpec, create_image

    root = zarr.open_group(str(path), mode="w", zarr_format=3)
    axes = tuple(Axis(n, "space", "micrometer") for n in "zyx")
    level = LevelSpec("s0", shape, chunks, (1.0, 1.0, 1.0), (0.0, 0.0, 0.0))
    create_image(root, "", version="0.5", axes=axes, levels=[level], dtype="uint16", name="b")
    return path


def noop_image(tmp: Path, count: int) -> Path:
    """About `count` chunks of 1x4x4 voxels, ten planes of them."""
    side = round((count / 10) ** 0.5)
    return empty_image(tmp / f"noop{count}.zarr", (10, side * 4, side * 4), (1, 4, 4))


def noop_pipeline():
    from engine import Pipeline

    return Pipeline.model_validate(
        {"steps": [{**NOOP["steps"][0], "output": {"kind": "image", "name": "copy"}}]}
    )


def peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def drive(image: str, address: str) -> dict:
    """In the driver's own process: one run of the no-op chain."""
    from engine.runs.runner import run

    before = peak_rss()
    started, cpu = time.perf_counter(), time.process_time()
    result = run(noop_pipeline(), image, scheduler=address, overwrite=True)
    return {
        "wall_s": time.perf_counter() - started,
        "driver_cpu_s": time.process_time() - cpu,
        "chunks": sum(s.tasks for s in result.stages if s.name == "copy"),
        "driver_rss_before_bytes": before,
        "driver_peak_rss_bytes": peak_rss(),
    }


def plan_and_setup(image: str) -> dict:
    """In a process of its own: compile the no-op plan and set up what the executor sets
    up before submitting anything, with the driver's peak RSS."""
    import numpy as np

    from engine.execute.batching import batch, batch_size
    from engine.plan.fingerprint import layout_hash
    from engine.plan.memory import projected_peak
    from engine.runs.planning import make_plan
    from engine.state.markers import Markers

    before = peak_rss()
    started = time.perf_counter()
    _, plan = make_plan(noop_pipeline(), image, run_id="bench", overwrite=True)
    compiled = time.perf_counter()
    layout = layout_hash(plan)
    projected_peak(plan)
    stage = plan.stage("copy")
    done = Markers(image, plan, layout).prepare(stage)
    finished = np.zeros(len(stage.tasks), bool)
    finished[done.positions] = True
    todo = np.flatnonzero(~finished)
    batches = batch(stage.tasks, todo, batch_size(len(todo), 2))
    owners = batches.owners(len(stage.tasks))
    return {
        "chunks": len(stage.tasks),
        "batches": len(batches),
        "compile_s": compiled - started,
        "setup_s": time.perf_counter() - compiled,
        "driver_state_bytes": owners.nbytes + batches.order.nbytes + batches.cuts.nbytes,
        "driver_rss_before_bytes": before,
        "driver_peak_rss_bytes": peak_rss(),
    }


def in_child(*argv: str) -> dict:
    """One of this script's probes, run in a fresh Python process; its JSON answer."""
    proc = subprocess.run(
        [sys.executable, __file__, "--probe", *argv], capture_output=True, text=True, check=True
    )
    return json.loads(proc.stdout.splitlines()[-1])


def overhead(tmp: Path, count: int, address: str, workers: int) -> dict:
    from engine.runs.planning import make_plan

    image = noop_image(tmp, count)
    pipeline = noop_pipeline()
    with Client(address) as client:
        cpu_before = cluster_cpu(client)
        driver = in_child("drive", str(image), address)
        cluster_cpu_s = cluster_cpu(client) - cpu_before
    wall, chunks = driver["wall_s"], driver["chunks"]

    # the same chunk work, back to back in one worker (no scheduling): the worker's open
    # arrays and imports are warm, as they are for the engine's chunk tasks
    _, plan = make_plan(pipeline, image, run_id="bench", overwrite=True)
    stage = plan.stage("copy")
    sample = [stage.tasks[i] for i in range(min(2000, len(stage.tasks)))]
    with Client(address) as client:
        work, work_cpu = client.submit(
            chunk_work, str(image), stage, sample, plan.spatial, plan.context, pure=False
        ).result()
    engine_per_chunk = wall / chunks
    engine_cpu = (cluster_cpu_s + driver["driver_cpu_s"]) / chunks
    return {
        "chunks": chunks,
        "engine_wall_s": wall,
        "engine_per_chunk_us": engine_per_chunk * 1e6,
        "work_per_chunk_us": work * 1e6,
        "overhead_per_chunk_us": (engine_per_chunk - work / workers) * 1e6,
        # CPU seconds of driver, scheduler and workers beyond the chunk work, spread over
        # the workers: what the overhead is on an otherwise idle machine, whatever the load
        "engine_cpu_per_chunk_us": engine_cpu * 1e6,
        "work_cpu_per_chunk_us": work_cpu * 1e6,
        "cpu_overhead_per_chunk_us": (engine_cpu - work_cpu) / workers * 1e6,
        "driver_peak_rss_bytes": driver["driver_peak_rss_bytes"],
        "driver_rss_before_bytes": driver["driver_rss_before_bytes"],
    }


def chunk_work(image: str, stage, tasks: list, spatial, context) -> tuple[float, float]:
    """Seconds of wall and CPU time per chunk of `tasks` run back to back, here."""
    from engine.worker.chain import run_blockwise

    common = {"spatial": spatial, "context": context, "values": {}}
    t0, cpu0 = time.perf_counter(), time.process_time()
    for task in tasks:
        run_blockwise(image, stage, task, None, common)
    return (time.perf_counter() - t0) / len(tasks), (time.process_time() - cpu0) / len(tasks)


def cluster_cpu(client: Client) -> float:
    """CPU seconds the scheduler and the workers have used so far (their processes)."""
    workers = client.run(time.process_time)
    return sum(workers.values()) + client.run_on_scheduler(time.process_time)


def noop(i: int) -> int:
    return i


def client_map(address: str, count: int) -> dict:
    with Client(address) as client:
        started = time.perf_counter()
        futures = client.map(noop, range(count), pure=False)
        client.gather(futures)
        wall = time.perf_counter() - started
        del futures
    return {"count": count, "wall_s": wall, "per_task_us": wall / count * 1e6}


def preview_image(path: Path, shape: tuple[int, ...], roi: tuple[slice, ...]) -> Path:
    """Sample data in the chunks around `roi` (with the gaussian's halo); the rest empty."""
    from engine.io.sample_image import make_nuclei

    image = empty_image(path, shape, (64, 64, 64))
    box = tuple(slice(max(0, s.start - 64), s.stop + 64) for s in roi)
    data = make_nuclei(tuple(b.stop - b.start for b in box), seed=0).image
    zarr.open_array(str(path / "s0"), mode="r+")[box] = data
    return image


def preview_latency(tmp: Path, address: str) -> list[dict]:
    from engine import Pipeline
    from engine.runs.runner import run

    pipeline = Pipeline.from_yaml(REPO / "configs/nuclei.yaml")
    rows = []
    shapes = ((256, 256, 256), (1024, 1024, 1024), (2048, 65536, 65536))
    for k, shape in enumerate((shapes[0], *shapes)):  # the first run warms the workers up
        start = tuple(s // 2 // 64 * 64 for s in shape)
        roi = tuple(slice(a, a + 64) for a in start)
        name = "x".join(map(str, shape))
        image = preview_image(tmp / f"preview-{name}-{k}.zarr", shape, roi)
        spec = {"z": [roi[0].start, roi[0].stop], "y": [roi[1].start, roi[1].stop]}
        spec["x"] = [roi[2].start, roi[2].stop]
        started = time.perf_counter()
        result = run(pipeline, image, roi=spec, scheduler=address)
        if k == 0:
            continue
        rows.append(
            {
                "image": name,
                "seconds": time.perf_counter() - started,
                "objects": result.labels.get("nuclei", 0),
                "tasks": sum(s.tasks for s in result.stages),
            }
        )
    return rows


def memory_at_sizes(tmp: Path, sizes: list[tuple[int, ...]], workers: int) -> list[dict]:
    from bench_pipeline import run_engine

    from engine.io.sample_zarr import write_sample

    rows = []
    for shape in sizes:
        sample = str(tmp / ("mem-" + "x".join(map(str, shape)) + ".zarr"))
        write_sample(sample, shape)
        engine = run_engine(sample, workers, config="configs/nuclei.yaml")
        rows.append(
            {
                "shape": list(shape),
                "wall_s": engine["wall_s"],
                "max_worker_peak_rss_bytes": engine["max_worker_peak_rss_bytes"],
                "objects": engine["objects"],
            }
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--counts", default="10000,100000")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--sizes", default="64,512,512:128,1024,1024:256,1024,1024")
    parser.add_argument("--plan-count", type=int, default=10**6)
    parser.add_argument("--out", default="bench-results/scheduler.json")
    parser.add_argument("--probe", nargs="+", help=argparse.SUPPRESS)  # in_child's
    parser.add_argument("--parts", default="a,b,c,d", help="which parts to run (a,b,c,d)")
    parser.add_argument("--warm-repeat", type=int, default=3, help="(d): runs per image")
    parser.add_argument("--tiny", action="store_true", help="(d): small images, to check it")
    args = parser.parse_args()
    parts = set(args.parts.split(","))
    if "a" not in parts:
        args.counts, args.plan_count = "", 0
    if "c" not in parts:
        args.sizes = ""
    if args.probe:
        name, *rest = args.probe
        print(json.dumps({"drive": drive, "plan": plan_and_setup}[name](*rest)))
        return
    counts = [int(c) for c in args.counts.split(",") if c]
    sizes = [tuple(int(v) for v in s.split(",")) for s in args.sizes.split(":") if s]
    report: dict = {"workers": args.workers, "load_before": os.getloadavg()}
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        if args.plan_count:
            report["plan"] = in_child("plan", str(noop_image(tmp, args.plan_count)))
        report["overhead"], report["client_map"], report["preview"] = [], [], []
        with (
            LocalCluster(
                n_workers=args.workers,
                threads_per_worker=1,
                processes=True,
                dashboard_address=":0",
                silence_logs=logging.ERROR,
            )
            if parts & {"a", "b"}
            else contextlib.nullcontext()
        ) as cluster:
            address = cluster.scheduler_address if cluster is not None else ""
            if counts:
                in_child("drive", str(noop_image(tmp, 1000)), address)  # warm the workers up
            report["overhead"] = [overhead(tmp, n, address, args.workers) for n in counts]
            report["client_map"] = [client_map(address, n) for n in counts]
            report["preview"] = preview_latency(tmp, address) if "b" in parts else []
        report["memory"] = memory_at_sizes(tmp, sizes, args.workers)
        if "d" in parts:
            report["warm_roi"] = warm_roi_latency(tmp, args.warm_repeat, args.tiny)
    report["load_after"] = os.getloadavg()

    print("(a) overhead per chunk task, no-op chain")
    for row, raw in zip(report["overhead"], report["client_map"], strict=True):
        print(
            f"  {row['chunks']:>7} chunks: engine {row['engine_wall_s']:6.1f} s, "
            f"{row['engine_per_chunk_us']:6.0f} us/chunk (work {row['work_per_chunk_us']:.0f} us "
            f"in one worker), overhead {row['overhead_per_chunk_us']:6.0f} us/chunk "
            f"(in CPU time over {args.workers} workers: "
            f"{row['cpu_overhead_per_chunk_us']:4.0f} us/chunk); "
            f"client.map no-op {raw['per_task_us']:6.0f} us/task; driver peak RSS "
            f"{row['driver_peak_rss_bytes'] / 2**20:.0f} MiB"
        )
    if "plan" in report:
        plan = report["plan"]
        print(
            f"  plan of {plan['chunks']} chunks: compiled in {plan['compile_s'] * 1e3:.0f} ms, "
            f"executor setup {plan['setup_s'] * 1e3:.0f} ms ({plan['batches']} batches, "
            f"{plan['driver_state_bytes'] / 2**20:.1f} MiB of state); driver peak RSS "
            f"{plan['driver_peak_rss_bytes'] / 2**20:.0f} MiB "
            f"({plan['driver_rss_before_bytes'] / 2**20:.0f} MiB after imports)"
        )
    print("(b) time to a 64^3 preview result (configs/nuclei.yaml, running cluster)")
    for row in report["preview"]:
        print(f"  {row['image']:>18}: {row['seconds']:5.2f} s, {row['tasks']} chunk tasks")
    print("(c) peak worker memory, gaussian -> Otsu -> label")
    for row in report["memory"]:
        shape = "x".join(map(str, row["shape"]))
        print(
            f"  {shape:>18}: {row['max_worker_peak_rss_bytes'] / 2**30:.2f} GiB "
            f"(wall {row['wall_s']:.1f} s, {row['objects']} objects)"
        )
    if "warm_roi" in report:
        print_warm(report["warm_roi"])
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2))
    print(f"load average {report['load_before']} before, {report['load_after']} after")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
