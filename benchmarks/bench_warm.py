"""Part (d) of benchmarks/bench_scheduler.py: an ROI run in the Adjust-Test-Evaluate loop, from
the command's start to its exit, with the warm engine (engine/execute/warm.py) running.

    python benchmarks/bench_scheduler.py --parts d [--warm-repeat 3] [--tiny]

The standard pipeline (configs/nuclei.yaml) on a 64^3 ROI of images from 256^3 to a
2048x65536x65536 volume (data only in the chunks around the ROI): the first command
starts the engine (its time is reported apart), the next ones find it. Next to it,
scipy on the same ROI (gaussian on the ROI and its halo, Otsu on the ROI, label): in
a fresh process (Python's start and imports included, as a command) and in a running
one (a notebook). The engine's labels equal scipy's as a partition, checked each run.
The engine runs in a folder of its own (NGFF_ENGINE_WARM_DIR), stopped at the end.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import zarr

REPO = Path(__file__).resolve().parents[1]
SHAPES = ((256, 256, 256), (2048, 65536, 65536))
TINY_SHAPES = ((128, 128, 128), (256, 1024, 1024))
HALO = 8  # the gaussian's (sigma 2, truncate 4)


def scipy_roi(path: str, roi: list[list[int]]) -> dict:
    """The ROI through scipy, timed from reading it; the labels go to a .npy file."""
    t0 = time.perf_counter()
    from scipy import ndimage
    from skimage.filters import threshold_otsu

    t1 = time.perf_counter()
    array = zarr.open_array(f"{path}/s0", mode="r")
    grown = tuple(
        slice(max(0, a - HALO), min(s, b + HALO))
        for (a, b), s in zip(roi, array.shape, strict=False)
    )
    data = array[grown]
    smooth = ndimage.gaussian_filter(data.astype(np.float32), 2.0)
    inner = tuple(slice(a - g.start, b - g.start) for (a, b), g in zip(roi, grown, strict=False))
    smooth = smooth[inner]
    labels, n = ndimage.label(smooth > threshold_otsu(smooth))
    t2 = time.perf_counter()
    np.save(f"{path}.scipy.npy", labels)
    return {"imports_s": t1 - t0, "compute_s": t2 - t1, "objects": int(n)}


def command(args: list[str], env: dict[str, str]) -> float:
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "engine", *args], env=env, check=True,
                   stdout=subprocess.DEVNULL)  # fmt: skip
    return time.perf_counter() - started


def warm_roi_latency(tmp: Path, repeat: int, tiny: bool) -> dict:
    from bench_pipeline import partition_equal, run_engine  # noqa: F401
    from bench_scheduler import preview_image

    env = {**os.environ, "NGFF_ENGINE_WARM": "1", "NGFF_ENGINE_WARM_DIR": str(tmp / "engine")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    config = str(REPO / "configs/nuclei.yaml")
    rows, first = [], None
    try:
        for shape in TINY_SHAPES if tiny else SHAPES:
            start = [s // 2 // 64 * 64 for s in shape]
            roi = [[a, a + 64] for a in start]
            name = "x".join(map(str, shape))
            image = preview_image(tmp / f"warm-{name}.zarr", shape, tuple(slice(*r) for r in roi))
            text = ",".join(f"{a}:{b}" for a, b in roi)
            args = ["run", config, "--input", str(image), "--roi", text, "--quiet", "--overwrite"]
            if first is None:  # starts the engine
                first = command(args, env)
            engine_s, fresh_s, inside_s, equal = [], [], [], []
            for _ in range(repeat):
                engine_s.append(command(args, env))
                started = time.perf_counter()
                child = subprocess.run(
                    [sys.executable, str(Path(__file__)), "--scipy-roi", str(image),
                     json.dumps(roi)],
                    capture_output=True, text=True, check=True,
                )  # fmt: skip
                fresh_s.append(time.perf_counter() - started)
                found = json.loads(child.stdout)
                inside_s.append(found["compute_s"])
                ours = zarr.open_array(str(image / "labels/nuclei/s0"), mode="r")
                ours = ours[tuple(slice(*r) for r in roi)]
                equal.append(partition_equal(np.load(f"{image}.scipy.npy"), ours))
            engine, fresh, inside = (float(np.median(v)) for v in (engine_s, fresh_s, inside_s))
            rows.append({
                "image": name,
                "engine_s_each": engine_s,
                "engine_s": engine,
                "scipy_fresh_process_s": fresh,
                "scipy_in_process_s": inside,
                "ratio_engine_over_scipy_fresh": engine / fresh,
                "ratio_engine_over_scipy_in_process": engine / inside,
                "labels_equal_each": equal,
            })  # fmt: skip
    finally:
        subprocess.run([sys.executable, "-m", "engine", "stop"], env=env, check=False,
                       stdout=subprocess.DEVNULL)  # fmt: skip
    return {"first_command_with_engine_start_s": first, "repeat": repeat, "rows": rows}


def print_warm(report: dict) -> None:
    print(
        "(d) warm ROI run, command start to exit (configs/nuclei.yaml, 64^3 ROI; first "
        f"command, starting the engine: {report['first_command_with_engine_start_s']:.2f} s)"
    )
    for row in report["rows"]:
        print(
            f"  {row['image']:>18}: {row['engine_s']:5.2f} s (median of {report['repeat']}); "
            f"scipy {row['scipy_fresh_process_s']:.2f} s in a fresh process "
            f"({row['ratio_engine_over_scipy_fresh']:.2f}x), {row['scipy_in_process_s']:.3f} s "
            f"in a running one; labels equal {all(row['labels_equal_each'])}"
        )


if __name__ == "__main__" and sys.argv[1:2] == ["--scipy-roi"]:
    print(json.dumps(scipy_roi(sys.argv[2], json.loads(sys.argv[3]))))
