"""Workloads of benchmarks/bench_pipeline.py besides the standard volume: each an image made
here, a pipeline, and the same computation with scipy/scikit-image on the whole array in
one process, checked against the engine's output in every run.

    python benchmarks/bench_pipeline.py --workloads slide,timeseries,small,double [--tiny]

- slide: a 2D slide, 16384x16384 uint16 in 1024x1024 chunks, median 3 -> Otsu -> label ->
  measure;
- timeseries: 4x64x512x512 (t, z, y, x) in 1x32x256x256 chunks, gaussian 2 -> Otsu per
  time point -> label;
- small: the standard pipeline as issue 18 names it (configs/nuclei.yaml: gaussian ->
  Otsu -> label) on a 64x256x256 sample, cold: the command's imports are in its time (it
  reads 16 MiB at most, so it runs on threads of the command's process:
  `cluster.in_process_max`), and it is compared with scipy's process from start to exit
  too; small-measure: the same with measure (configs/nuclei-measure.yaml);
- double: the standard pipeline on 512x1024x1024, twice the standard volume (the run time
  should double, the worker peak stay).

scipy's time is from reading the input to its results written (labels, and the table when
measured: `write_results`), as the design's baseline is taken; `read_compute_s` leaves the
writing out.

`--tiny` shrinks every shape (to check the benchmark itself, not to time anything).
Every engine run is cold (`--no-warm`): its own cluster, started by the command.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml
import zarr

REPO = Path(__file__).resolve().parents[1]

STANDARD = yaml.safe_load((REPO / "configs/nuclei-measure.yaml").read_text())
SLIDE = {
    "steps": [
        {"name": "smooth", "op": "median", "input": "image", "params": {"size": 3}},
        {"name": "mask", "op": "threshold", "input": "smooth", "params": {"method": "otsu"}},
        {"name": "nuclei", "op": "label", "input": "mask",
         "output": {"kind": "label", "name": "nuclei"}},
        {"name": "stats", "op": "measure", "input": "nuclei", "params": {"intensity": "image"},
         "output": {"kind": "table", "name": "nuclei_stats"}},
    ]
}  # fmt: skip
NUCLEI = {"steps": STANDARD["steps"][:3]}  # configs/nuclei.yaml: gaussian -> Otsu -> label
TIMESERIES = NUCLEI
PROPS = ("label", "area", "centroid", "bbox", "intensity_mean", "intensity_min", "intensity_max")


@dataclass(frozen=True)
class Workload:
    name: str
    shape: tuple[int, ...]
    chunks: tuple[int, ...]
    tiny_shape: tuple[int, ...]
    tiny_chunks: tuple[int, ...]
    config: dict
    kind: str  # the sample writer and the scipy reference: volume, slide, timeseries

    @property
    def measures(self) -> bool:
        return any(step["op"] == "measure" for step in self.config["steps"])

    def sizes(self, tiny: bool) -> tuple[tuple[int, ...], tuple[int, ...]]:
        return (self.tiny_shape, self.tiny_chunks) if tiny else (self.shape, self.chunks)


WORKLOADS = {
    w.name: w
    for w in (
        Workload("slide", (16384, 16384), (1024, 1024), (512, 512), (128, 128), SLIDE, "slide"),
        Workload(
            "timeseries",
            (4, 64, 512, 512),
            (1, 32, 256, 256),
            (2, 16, 64, 64),
            (1, 8, 32, 32),
            TIMESERIES,
            "timeseries",
        ),
        Workload(
            "small", (64, 256, 256), (64, 256, 256), (16, 64, 64), (16, 32, 32), NUCLEI, "volume"
        ),
        Workload(
            "small-measure",
            (64, 256, 256),
            (64, 256, 256),
            (16, 64, 64),
            (16, 32, 32),
            STANDARD,
            "volume",
        ),
        Workload(
            "double",
            (512, 1024, 1024),
            (64, 256, 256),
            (64, 128, 128),
            (16, 64, 64),
            STANDARD,
            "volume",
        ),
    )
}


def write_workload_image(work: Workload, path: Path, tiny: bool) -> None:
    """The workload's input: the nuclei sample (volumes, slides), or one nuclei volume
    per time point (a seed each) as a t, z, y, x image."""
    from engine.io.sample_zarr import write_sample

    shape, chunks = work.sizes(tiny)
    if work.kind in ("volume", "slide"):
        write_sample(path, shape, chunks)
        return
    from ome_images import write_image

    from engine.io.sample_image import make_nuclei

    frames = [make_nuclei(shape[1:], seed=t).image for t in range(shape[0])]
    write_image(path, np.stack(frames), chunks, names=("t", "z", "y", "x"), levels=1)


def write_results(path: str, frames: list[np.ndarray], table: dict | None, chunks) -> float:
    """What a scipy user writes to have what the engine writes: the labels as a zarr array
    in the input's chunks (zarr's default codec) and, when measured, the table as an
    AnnData (the engine's table format), beside the image. Returns the seconds taken.
    The design's baseline (shared/design.md) and issue 18 time scipy with writing its
    labels ("write+count")."""
    started = time.perf_counter()
    out = f"{path}.scipy-results"
    labels = frames[0] if len(frames) == 1 else np.stack(frames)
    zarr.create_array(f"{out}/labels.zarr", data=labels, chunks=chunks, overwrite=True)
    if table is not None:
        import anndata
        import pandas as pd

        names = [k for k in table if k != "label"]
        values = np.stack([np.asarray(table[k], dtype=np.float64) for k in names], axis=1)
        obs = pd.DataFrame(index=pd.Index([str(i) for i in table["label"]], name="label"))
        data = anndata.AnnData(X=values, obs=obs, var=pd.DataFrame(index=pd.Index(names)))
        data.write_zarr(f"{out}/table.zarr")
    return time.perf_counter() - started


def reference(work: Workload, path: str) -> dict:
    """scipy/scikit-image on the whole array in this process, timed from reading the
    input to its results written (`write_results`); checked against the engine's labels
    (as a partition, per time point) and table (every regionprops column of every
    object). Prints nothing; returns JSON."""
    import resource

    from bench_pipeline import partition_equal, table_equal
    from scipy import ndimage
    from skimage.filters import threshold_otsu
    from skimage.measure import regionprops_table

    if work.measures:  # imported before timing, as scipy is (write_results)
        import anndata  # noqa: F401

    t0 = time.perf_counter()
    source = zarr.open_array(f"{path}/s0")
    image = source[...]
    t1 = time.perf_counter()
    if work.kind == "timeseries":
        frames, counts = [], []
        for frame in image:
            smooth = ndimage.gaussian_filter(frame.astype(np.float32), 2.0)
            labels, n = ndimage.label(smooth > threshold_otsu(smooth))
            frames.append(labels)
            counts.append(n)
        t2 = time.perf_counter()
        table, n = None, sum(counts)
    else:
        if work.kind == "slide":
            smooth = ndimage.median_filter(image, size=3, mode="reflect")
        else:
            smooth = ndimage.gaussian_filter(image.astype(np.float32), 2.0)
        labels, n = ndimage.label(smooth > threshold_otsu(smooth))
        t2 = time.perf_counter()
        table = None
        if work.measures:
            table = regionprops_table(labels, intensity_image=image, properties=PROPS)
        frames = [labels]
    t3 = time.perf_counter()
    write_s = write_results(path, frames, table, source.chunks)
    computed_at = time.time()  # wall clock, for the parent's cold time (before the checks)
    engine = zarr.open_array(f"{path}/labels/nuclei/s0")[...]
    if work.kind != "timeseries":
        engine = engine[None]
    equal = all(partition_equal(a, b) for a, b in zip(frames, engine, strict=True))
    tables_equal = None
    if table is not None:
        tables_equal = equal and table_equal(
            table, frames[0], engine[0], f"{path}/tables/nuclei_stats"
        )
    return {
        "read_s": t1 - t0,
        "filter_otsu_label_s": t2 - t1,
        "measure_s": t3 - t2,
        "compute_s": t3 - t1,
        "write_s": write_s,
        "read_compute_s": t3 - t0,
        "total_s": t3 - t0 + write_s,
        "computed_at": computed_at,
        "objects": int(n),
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "labels_equal": bool(equal),
        "tables_equal": tables_equal,
    }


def reference_in_child(work: Workload, path: str) -> dict:
    """The reference in a fresh Python process; `process_s` is from its start to the end
    of its computation (its imports included, the checks against the engine's output
    not): scipy cold, as the engine's runs are cold."""
    started = time.time()
    child = subprocess.run(
        [sys.executable, str(REPO / "benchmarks/bench_pipeline.py"), "--reference-child",
         work.name, path],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    result = json.loads(child.stdout)
    return {**result, "process_s": result["computed_at"] - started}


def cpu_breakdown(stages: list[dict]) -> dict[str, float]:
    """The engine's CPU seconds by part (engine/core/cpu.py), summed over stages."""
    total: dict[str, float] = {}
    for stage in stages:
        for part, seconds in stage.get("cpu", {}).items():
            total[part] = round(total.get(part, 0.0) + seconds, 3)
    return total


def run_workload(work: Workload, tmp: Path, workers: int, repeat: int, tiny: bool) -> dict:
    """The engine (cold, through the command) and scipy in turn, `repeat` times each;
    ratios of the medians."""
    from bench_pipeline import median_run, run_engine

    shape, chunks = work.sizes(tiny)
    sample = tmp / f"{work.name}.zarr"
    write_workload_image(work, sample, tiny)
    os.sync()  # the sample's own writeback is not the runs' to wait for
    config = tmp / f"{work.name}.yaml"
    config.write_text(yaml.safe_dump(work.config))
    engines, scipys = [], []
    for _ in range(repeat):
        engines.append(run_engine(str(sample), workers, str(config), cold=True))
        scipys.append(reference_in_child(work, str(sample)))
    engine, scipy = median_run(engines, "wall_s"), median_run(scipys, "total_s")
    return {
        "workload": work.name,
        "shape": list(shape),
        "chunks": list(chunks),
        "pipeline": [f"{s['op']}" for s in work.config["steps"]],
        "repeat": repeat,
        "engine_wall_s_each": [e["wall_s"] for e in engines],
        "scipy_total_s_each": [s["total_s"] for s in scipys],
        "scipy_compute_s_each": [s["compute_s"] for s in scipys],
        "labels_equal_each": [s["labels_equal"] for s in scipys],
        "tables_equal_each": [s["tables_equal"] for s in scipys],
        "engine": engine,
        "engine_cpu": cpu_breakdown(engine["stages"]),
        "scipy": scipy,
        "ratio_engine_over_scipy_total": engine["wall_s"] / scipy["total_s"],
        "ratio_engine_over_scipy_read_compute": engine["wall_s"] / scipy["read_compute_s"],
        "ratio_engine_over_scipy_compute": engine["wall_s"] / scipy["compute_s"],
        "ratio_engine_over_scipy_process": engine["wall_s"] / scipy["process_s"],
    }


def print_workload(report: dict) -> None:
    gib = 1024**3
    engine, scipy = report["engine"], report["scipy"]
    shape = "x".join(map(str, report["shape"]))
    print(f"{report['workload']} ({shape}, {' -> '.join(report['pipeline'])})")
    print(
        f"  engine {engine['wall_s']:.2f} s on {engine['pool']} (worker peak "
        f"{engine['max_worker_peak_rss_bytes'] / gib:.2f} GiB); scipy {scipy['total_s']:.2f} s "
        f"read+compute+write ({scipy['write_s']:.2f} s writing), {scipy['compute_s']:.2f} s "
        f"compute; ratio {report['ratio_engine_over_scipy_total']:.2f}x (read+compute+write), "
        f"{report['ratio_engine_over_scipy_read_compute']:.2f}x (read+compute), "
        f"{report['ratio_engine_over_scipy_compute']:.2f}x (compute); scipy cold (its "
        f"process, imports included) {scipy['process_s']:.2f} s, ratio "
        f"{report['ratio_engine_over_scipy_process']:.2f}x"
    )
    print(
        f"  exact every run: labels {all(report['labels_equal_each'])}, tables "
        f"{all(t is not False for t in report['tables_equal_each'])}; "
        f"{engine['objects']} objects (scipy {scipy['objects']})"
    )
    print("  engine CPU s: " + ", ".join(f"{k} {v:.2f}" for k, v in report["engine_cpu"].items()))
