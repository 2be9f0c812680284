"""Benchmark: a plate in one run, against one run per field, against scipy per field.

Not a test. Writes an HCS plate with ngio (rows x columns wells, `--fields` fields each,
2D uint16 nuclei images of `--shape`, chunks 1x512x512), then times, as a user runs them:

1. `ngff-engine run configs/nuclei-measure.yaml --input plate.zarr` (one run, one
   cluster, every field; a plate-level table at the end);
2. the same command once per field (`--input plate.zarr/B/03/0`), on a copy of the plate:
   a shell loop, one cluster start per field;
3. scipy + scikit-image per field in one process (gaussian_filter, threshold_otsu,
   ndimage.label, regionprops_table), as a user would without the engine.

and checks that each field's engine labels equal scipy's as a partition. Prints a table
and writes JSON. Full size (the issue's benchmark): 4x6 wells, 2 fields of 2048x2048:

    python benchmarks/bench_plate.py --rows 4 --columns 6 --fields 2 --shape 2048,2048

A tiny plate checks the script itself in a minute:

    python benchmarks/bench_plate.py --rows 2 --columns 2 --fields 2 --shape 256,256
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import string
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import zarr
from bench_pipeline import partition_equal  # the benchmarks' one partition check

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "configs" / "nuclei-measure.yaml"
# the runs use a warm engine of their own (NGFF_ENGINE_WARM_DIR, set in main), stopped at
# the end: not one another user of the machine may be using
ENV = dict(os.environ)
PROPS = ("label", "area", "centroid", "bbox", "intensity_mean", "intensity_min", "intensity_max")


def write_plate(path: Path, rows: int, columns: int, fields: int, shape: tuple[int, int]) -> list:
    """An ngio plate of nuclei images; returns the field paths (`B/03/0`, ...)."""
    from ngio import ImageInWellPath, create_empty_plate, create_ome_zarr_from_array

    from engine.io.sample_image import make_nuclei

    keys = [
        (string.ascii_uppercase[1 + r], f"{3 + 2 * c:02d}", str(f))
        for r in range(rows)
        for c in range(columns)
        for f in range(fields)
    ]
    images = [ImageInWellPath(row=r, column=c, path=f) for r, c, f in keys]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        create_empty_plate(str(path), name="bench", images=images, ngff_version="0.4")
        for k, (r, c, f) in enumerate(keys):
            data = make_nuclei(shape, seed=k).image[None]
            create_ome_zarr_from_array(
                store=str(path / r / c / f),
                array=data,
                pixelsize=0.5,
                axes_names="cyx",
                ngff_version="0.4",
                levels=3,
                chunks=(1, 512, 512),
                consolidation_mode="auto",
                overwrite=True,
            )
    return [f"{r}/{c}/{f}" for r, c, f in keys]


def engine_cmd(target: Path, workers: int) -> list[str]:
    return [
        sys.executable, "-m", "engine", "run", str(CONFIG), "--input", str(target),
        "--workers", str(workers), "--quiet", "--json",
    ]  # fmt: skip


def timed(cmd: list[str], keep: dict | None = None) -> float:
    """Seconds the command took; `keep` gets its JSON output (`--json`)."""
    started = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=ENV)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{done.stderr[-3000:]}")
    seconds = time.perf_counter() - started
    if keep is not None:
        try:
            keep.update(json.loads(done.stdout))
        except ValueError:
            pass
    return seconds


def load() -> str:
    """The machine's load averages (1, 5, 15 min): the machine is shared."""
    with open("/proc/loadavg") as handle:
        return " ".join(handle.read().split()[:3])


def scipy_fields(plate: Path, fields: list[str]) -> tuple[float, dict[str, np.ndarray]]:
    """Every field in one process, one after the other; returns (seconds, labels)."""
    from scipy import ndimage
    from skimage.filters import threshold_otsu
    from skimage.measure import regionprops_table

    labels = {}
    started = time.perf_counter()
    for key in fields:
        image = zarr.open_array(str(plate / key / "0"), mode="r")[0]
        smooth = ndimage.gaussian_filter(image.astype(np.float32), 2.0)
        found, _ = ndimage.label(smooth > threshold_otsu(smooth))
        regionprops_table(found, intensity_image=image, properties=PROPS)
        labels[key] = found
    return time.perf_counter() - started, labels


def engine_labels(field: Path) -> np.ndarray:
    from engine.io.metadata import read_image

    level = read_image(field / "labels/nuclei", validate=False).levels[0].path
    labels = np.asarray(zarr.open_array(str(field / "labels/nuclei" / level), mode="r"))
    return labels.reshape(labels.shape[-2:])  # (y, x): the label image may keep a c axis


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=4)
    parser.add_argument("--columns", type=int, default=6)
    parser.add_argument("--fields", type=int, default=2)
    parser.add_argument("--shape", default="2048,2048")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--out", default=None, help="JSON results file")
    parser.add_argument("--tmp", default=None, help="folder for the plates (default: a temp dir)")
    args = parser.parse_args()
    shape = tuple(int(s) for s in args.shape.split(","))
    tmp = Path(tempfile.mkdtemp(prefix="bench-plate-", dir=args.tmp))
    ENV["NGFF_ENGINE_WARM_DIR"] = str(tmp / "warm-engine")
    try:
        plate = tmp / "plate.zarr"
        started = time.perf_counter()
        fields = write_plate(plate, args.rows, args.columns, args.fields, shape)
        write_s = time.perf_counter() - started
        loop_plate = tmp / "loop.zarr"
        shutil.copytree(plate, loop_plate)

        load_before = load()
        plate_json: dict = {}
        plate_s = timed(engine_cmd(plate, args.workers), plate_json)
        print(f"plate run: {plate_s:.1f} s", flush=True)
        loop_s = sum(timed(engine_cmd(loop_plate / key, args.workers)) for key in fields)
        print(f"loop of {len(fields)} runs: {loop_s:.1f} s", flush=True)
        scipy_s, expected = scipy_fields(plate, fields)
        equal = all(partition_equal(engine_labels(plate / k), expected[k]) for k in fields)
        import anndata

        table = anndata.read_zarr(str(plate / "tables/nuclei_stats"))
        objects = sum(int(v.max()) for v in expected.values())
        results = {
            "plate": f"{args.rows}x{args.columns} wells x {args.fields} fields of {shape}",
            "fields": len(fields),
            "write_plate_s": round(write_s, 2),
            "engine_plate_run_s": round(plate_s, 2),
            "engine_loop_of_runs_s": round(loop_s, 2),
            "scipy_per_field_s": round(scipy_s, 2),
            "plate_over_scipy": round(plate_s / scipy_s, 2),
            "loop_over_plate": round(loop_s / plate_s, 2),
            "labels_equal": equal,
            # the plate run's workers: thread-seconds busy in chunk tasks of those they had
            "plate_run_workers": plate_json.get("workers"),
            "plate_run_driver_cpu_s": plate_json.get("driver_cpu_seconds"),
            "load_before": load_before,
            "load_after": load(),
            "plate_table_rows": len(table),
            "objects": objects,
            "workers": args.workers,
        }
    finally:
        stop = [sys.executable, "-m", "engine", "stop"]
        subprocess.run(stop, capture_output=True, cwd=REPO, env=ENV, timeout=120)
        shutil.rmtree(tmp, ignore_errors=True)
    width = max(len(k) for k in results)
    for key, value in results.items():
        print(f"{key:<{width}}  {value}")
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
