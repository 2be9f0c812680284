"""Benchmark: the standard pipeline through the engine next to scipy on the whole array.

Not a test (pytest does not collect it). Prints a table and writes JSON:

    python benchmarks/bench_pipeline.py [--shape 256,1024,1024] [--small 128,512,512]
                                   [--workers 2] [--repeat 3] [--out bench.json]
                                   [--workloads standard,slide,timeseries,small,double]
                                   [--tiny]

`--workloads` adds the 2D slide, the time series, the cold small sample and the double
volume (benchmarks/bench_workloads.py); `--tiny` shrinks every shape to check the benchmark.
Every engine run is cold (`--no-warm`): its cluster's start is in its time.

Measured in one run, on the same sample: plan time for a 64^3 ROI in a metadata-only
2048x65536x65536 image; the engine's wall time for configs/nuclei-measure.yaml
(gaussian -> Otsu -> label -> measure) on a local cluster, with peak memory of the
driver and of the largest worker; scipy/scikit-image on the whole array in one process
(gaussian_filter, threshold_otsu, ndimage.label, regionprops_table with the same
columns) with its peak memory; whether labels are equal as a partition and the tables
equal object for object; the ratio engine / scipy; and the engine's worker peak on a
second, smaller sample, to show it does not grow with the image.

The engine and scipy run `--repeat` times, in turn, and the ratio is of their medians:
on this 2-core virtual machine one run of either varies by up to 15% from one minute
to the next, every stage alike.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import psutil
import zarr

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))  # ome_images: the tests' image writers, not conftest

from bench_workloads import (  # noqa: E402
    WORKLOADS,
    cpu_breakdown,
    print_workload,
    reference,
    run_workload,
    write_results,
)


def plan_time_huge(tmp: Path) -> dict:
    from ome_images import huge_image

    from engine.core.geometry import Roi
    from engine.core.pipeline import Pipeline
    from engine.io.metadata import read_image
    from engine.plan.compiler import compile_plan

    meta = read_image(huge_image(tmp / "huge.zarr"))
    roi = Roi((1000, 30000, 40000), (1064, 30064, 40064))
    nuclei = Pipeline.from_yaml(REPO / "configs/nuclei.yaml")
    times = []
    for _ in range(5):
        started = time.perf_counter()
        plan = compile_plan(nuclei, meta, roi)
        times.append(time.perf_counter() - started)
    return {"plan_seconds_min": min(times), "plan_tasks": plan.task_count}


def scipy_child(path: str, labels_path: str) -> None:
    """Whole array in memory, as a user would without the engine; prints JSON."""
    import anndata  # noqa: F401  (before timing, as scipy: write_results writes the table)
    from scipy import ndimage
    from skimage.filters import threshold_otsu
    from skimage.measure import regionprops_table

    t0 = time.perf_counter()
    source = zarr.open_array(f"{path}/s0")
    image = source[...]
    t1 = time.perf_counter()
    smooth = ndimage.gaussian_filter(image.astype(np.float32), 2.0)
    t2 = time.perf_counter()
    mask = smooth > threshold_otsu(smooth)
    labels, n = ndimage.label(mask)
    t3 = time.perf_counter()
    table = regionprops_table(labels, intensity_image=image, properties=PROPS)
    t4 = time.perf_counter()
    write_s = write_results(path, [labels], table, source.chunks)
    engine = zarr.open_array(labels_path)[...]
    equal = partition_equal(labels, engine)
    tables_equal = equal and table_equal(table, labels, engine, f"{path}/tables/nuclei_stats")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(
        json.dumps(
            {
                "read_s": t1 - t0,
                "gaussian_s": t2 - t1,
                "otsu_label_s": t3 - t2,
                "measure_s": t4 - t3,
                "compute_s": t4 - t1,
                "write_s": write_s,
                "read_compute_s": t4 - t0,
                "total_s": t4 - t0 + write_s,
                "objects": int(n),
                "peak_rss_bytes": peak,
                "labels_equal": bool(equal),
                "tables_equal": bool(tables_equal),
            }
        )
    )


PROPS = ("label", "area", "centroid", "bbox", "intensity_mean", "intensity_min", "intensity_max")


def table_equal(ref: dict, labels: np.ndarray, engine: np.ndarray, table: str) -> bool:
    """Every regionprops column of every object, after mapping scipy's ids to the engine's."""
    from engine.io.tables import read_table

    ids, columns, values = read_table(table)
    fg = labels != 0
    to_engine = np.zeros(labels.max() + 1, dtype=np.int64)
    to_engine[labels[fg]] = engine[fg]
    order = np.argsort(ids)
    rows = order[np.searchsorted(ids[order], to_engine[ref["label"]])]
    if not np.array_equal(ids[rows], to_engine[ref["label"]]):
        return False
    for key, want in ref.items():
        if key == "label":
            continue
        got = values[rows, columns.index(key)]
        if not np.allclose(got, np.asarray(want, dtype=np.float64), rtol=1e-9, atol=1e-9):
            return False
    return True


def partition_equal(a: np.ndarray, b: np.ndarray) -> bool:
    """Same objects, any ids, in O(voxels)."""
    if a.shape != b.shape or not np.array_equal(a == 0, b == 0):
        return False
    fg = a != 0
    x, y = a[fg].astype(np.int64), b[fg].astype(np.int64)
    forward = np.zeros(x.max(initial=0) + 1, dtype=np.int64)
    forward[x] = y
    backward = np.zeros(y.max(initial=0) + 1, dtype=np.int64)
    backward[y] = x
    return bool((forward[x] == y).all() and (backward[y] == x).all())


def run_engine(
    sample: str, workers: int, config: str = "configs/nuclei-measure.yaml", cold: bool = True
) -> dict:
    """The command as a user runs it, timed from start to exit. Each worker's peak
    memory is its VmHWM, which the engine reports; only the driver's RSS is sampled here
    (polling every worker's took CPU from them, on 2 cores). `cold`: a cluster of its
    own (`--no-warm`), its start in the time."""
    cmd = [
        sys.executable,
        "-m",
        "engine",
        "run",
        str(REPO / config),
        "--input",
        sample,
        "--workers",
        str(workers),
        "--overwrite",
        "--json",
        *(["--no-warm"] if cold else []),
    ]
    started = time.perf_counter()
    proc = psutil.Popen(cmd, stdout=subprocess.PIPE, text=True)
    peak = [0]
    done = threading.Event()

    def sample_driver() -> None:
        while not done.wait(0.1):
            try:
                peak[0] = max(peak[0], proc.memory_info().rss)
            except psutil.Error:
                return

    watcher = threading.Thread(target=sample_driver, daemon=True)
    watcher.start()
    out, _ = proc.communicate()
    wall = time.perf_counter() - started
    done.set()
    if proc.returncode != 0:
        raise SystemExit(f"engine run failed with exit {proc.returncode}")
    result = json.loads(out)
    return {
        "wall_s": wall,
        "engine_reported_s": result["seconds"],
        "objects": result["objects"]["nuclei"],
        # threads of the command's process, or a dask cluster (engine/execute/placement.py)
        "pool": "threads" if "in-process" in result["peak_worker_bytes"] else "dask",
        "stages": result["stages"],
        "cpu": cpu_breakdown(result["stages"]),
        "merge": result.get("merge", {}),
        "driver_peak_rss_bytes": peak[0],
        "max_worker_peak_rss_bytes": max(result["peak_worker_bytes"].values(), default=0),
    }


def scipy_run(sample: str) -> dict:
    """scipy on the whole array in a fresh process, checked against the engine's output."""
    child = subprocess.run(
        [sys.executable, __file__, "--scipy-child", sample, f"{sample}/labels/nuclei/s0"],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(child.stdout)


def median_run(runs: list[dict], key: str) -> dict:
    """The run with the median `key` (the lower middle one for an even count)."""
    return sorted(runs, key=lambda r: r[key])[(len(runs) - 1) // 2]


def compile_engine() -> None:
    """The engine's modules compiled to bytecode, as pip compiles an installed package's
    (and scipy's, which the reference imports). An editable install leaves that to the
    first import, and where PYTHONDONTWRITEBYTECODE is set (this machine's environment)
    every command compiled the engine's ~110 modules again: 0.1 s of a 1.1 s cold run of
    the small sample (1.21 to 1.53 s against 1.09 to 1.18 s, 5 runs each)."""
    import compileall

    for package in ("engine", "tasks"):
        compileall.compile_dir(REPO / package, quiet=1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default="256,1024,1024")
    parser.add_argument("--small", default="128,512,512", help="second size, for memory")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--sample", default=None, help="reuse this sample zarr")
    parser.add_argument(
        "--repeat",
        type=int,
        default=3,
        help="engine and scipy runs, taken in turn; the ratio is of their medians",
    )
    parser.add_argument("--out", default="bench-results/pipeline.json")
    parser.add_argument(
        "--workloads",
        default="standard",
        help="comma-separated: standard (the volume above), slide, timeseries, small, double "
        "(benchmarks/bench_workloads.py); 'all' for every one",
    )
    parser.add_argument(
        "--tiny", action="store_true", help="tiny shapes, to check the benchmark, not to time"
    )
    parser.add_argument("--scipy-child", nargs=2, help=argparse.SUPPRESS)
    parser.add_argument("--reference-child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.scipy_child:
        scipy_child(*args.scipy_child)
        return
    if args.reference_child:
        name, path = args.reference_child
        print(json.dumps(reference(WORKLOADS[name], path)))
        return
    names = list(WORKLOADS) + ["standard"] if args.workloads == "all" else args.workloads.split(",")
    unknown = set(names) - {"standard", *WORKLOADS}
    if unknown:
        raise SystemExit(f"--workloads: unknown {', '.join(sorted(unknown))}")
    if args.tiny:
        args.shape, args.small = "32,128,128", "16,64,64"
    compile_engine()
    others = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in (n for n in names if n != "standard"):
            others[name] = run_workload(WORKLOADS[name], Path(tmp), args.workers, args.repeat,
                                        args.tiny)  # fmt: skip
            print_workload(others[name])
    if "standard" not in names:
        write_report(args.out, {"workloads": others, "cores": psutil.cpu_count()})
        return

    from engine.io.sample_zarr import write_sample

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        shape = tuple(int(s) for s in args.shape.split(","))
        sample = args.sample or str(tmp / "sample.zarr")
        if not Path(sample).exists():
            write_sample(sample, shape)
        plan = plan_time_huge(tmp)
        small_shape = tuple(int(s) for s in args.small.split(","))
        small_sample = str(tmp / "small.zarr")
        write_sample(small_sample, small_shape)
        os.sync()  # the samples' writeback is not the runs' to wait for
        small = run_engine(small_sample, args.workers)
        engines, scipys = [], []
        for _ in range(args.repeat):  # in turn, so both see the machine as it is then
            engines.append(run_engine(sample, args.workers))
            scipys.append(scipy_run(sample))
    engine = median_run(engines, "wall_s")
    scipy = median_run(scipys, "compute_s")

    report = {
        "repeat": args.repeat,
        "engine_wall_s_each": [e["wall_s"] for e in engines],
        "scipy_compute_s_each": [s["compute_s"] for s in scipys],
        "labels_equal_each": [s["labels_equal"] for s in scipys],
        "tables_equal_each": [s["tables_equal"] for s in scipys],
        "shape": list(shape),
        "workers": args.workers,
        "cores": psutil.cpu_count(),
        "plan": plan,
        "engine": engine,
        "engine_small": {"shape": list(small_shape), **small},
        "scipy": scipy,
        "ratio_engine_over_scipy_compute": engine["wall_s"] / scipy["compute_s"],
        "ratio_engine_over_scipy_total": engine["wall_s"] / scipy["total_s"],
        "workloads": others,
    }
    if "double" in others:  # scale: twice the voxels against the standard volume
        double = others["double"]["engine"]
        report["double_over_standard"] = {
            "wall": double["wall_s"] / engine["wall_s"],
            "worker_peak": double["max_worker_peak_rss_bytes"]
            / max(1, engine["max_worker_peak_rss_bytes"]),
        }
    gib = 1024**3
    rows = [
        ("plan, 64^3 ROI in 2048x65536x65536", f"{plan['plan_seconds_min'] * 1000:.1f} ms", ""),
        (
            "engine wall (local cluster)",
            f"{engine['wall_s']:.1f} s",
            f"worker peak {engine['max_worker_peak_rss_bytes'] / gib:.2f} GiB, "
            f"driver {engine['driver_peak_rss_bytes'] / gib:.2f} GiB",
        ),
        (
            "scipy whole array, read+compute+write",
            f"{scipy['total_s']:.1f} s",
            f"peak {scipy['peak_rss_bytes'] / gib:.2f} GiB; gaussian {scipy['gaussian_s']:.1f} s, "
            f"otsu+label {scipy['otsu_label_s']:.1f} s, regionprops {scipy['measure_s']:.1f} s, "
            f"read {scipy['read_s']:.1f} s, write {scipy['write_s']:.1f} s",
        ),
        (
            f"engine wall, {'x'.join(map(str, small_shape))}",
            f"{small['wall_s']:.1f} s",
            f"worker peak {small['max_worker_peak_rss_bytes'] / gib:.2f} GiB (memory vs size)",
        ),
        ("engine / scipy (compute only)", f"{report['ratio_engine_over_scipy_compute']:.2f}x", ""),
        (
            "engine / scipy (read+compute)",
            f"{engine['wall_s'] / scipy['read_compute_s']:.2f}x",
            "",
        ),
        (
            "engine / scipy (read+compute+write)",
            f"{report['ratio_engine_over_scipy_total']:.2f}x",
            "the design's baseline",
        ),
        (
            "labels equal as a partition",
            str(all(report["labels_equal_each"])),
            f"{engine['objects']} objects (scipy {scipy['objects']}), every run",
        ),
        ("tables equal (regionprops columns)", str(all(report["tables_equal_each"])), ""),
        (
            f"runs, engine and scipy in turn ({args.repeat})",
            "",
            "engine "
            + ", ".join(f"{w:.1f}" for w in report["engine_wall_s_each"])
            + " s; scipy "
            + ", ".join(f"{c:.1f}" for c in report["scipy_compute_s_each"])
            + " s (medians above)",
        ),
    ]
    width = max(len(r[0]) for r in rows)
    for name, value, note in rows:
        print(f"{name:<{width}}  {value:>10}  {note}")
    for stage in engine["stages"]:
        print(f"  {stage['name']:<{width - 2}}  {stage['seconds']:>9.2f}s  {stage['tasks']} tasks")
    for step, merge in engine["merge"].items():
        print(f"  merge {step}: " + ", ".join(f"{k} {v:.4g}" for k, v in merge.items()))
    print("  engine CPU s: " + ", ".join(f"{k} {v:.2f}" for k, v in engine["cpu"].items()))
    if "double_over_standard" in report:
        scale = report["double_over_standard"]
        print(
            f"double / standard: wall {scale['wall']:.2f}x, worker peak {scale['worker_peak']:.2f}x"
        )
    write_report(args.out, report)


def write_report(out: str, report: dict) -> None:
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(json.dumps(report, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
