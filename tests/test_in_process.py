"""Small runs in the command's own process (`cluster.in_process_max`): a local run whose
plan reads at most that much starts no worker processes; its outputs equal scipy's on the
whole array and a worker-process run's, byte for byte; larger runs, `in_process_max: 0`
and a bad NGFF_ENGINE_IN_PROCESS_MAX keep to worker processes or are refused.

tests/conftest.py sets NGFF_ENGINE_IN_PROCESS_MAX=0 for every other test, so that they
keep exercising worker processes; these tests set it themselves."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import zarr
from conftest import (
    Cli,
    engine_command,
    engine_environment,
    nuclei_config,
    same_partition,
    tree_hash,
)
from scipy import ndimage
from skimage.filters import threshold_otsu

from engine.core.worker_env import HEAP_TOP_PAD_BYTES


def _run(config: Path, image: Path, limit: str | None, *extra: str) -> tuple[int, dict, str]:
    env = engine_environment()
    if limit is None:
        env.pop("NGFF_ENGINE_IN_PROCESS_MAX", None)  # the config's value, or the default
    else:
        env["NGFF_ENGINE_IN_PROCESS_MAX"] = limit
    args = [engine_command(), "run", str(config), "--input", str(image), "--json", "--no-warm"]
    proc = subprocess.run([*args, *extra], capture_output=True, text=True, env=env, timeout=300)
    return proc.returncode, json.loads(proc.stdout) if proc.returncode == 0 else {}, proc.stderr


def _workers(result: dict) -> list[str]:
    return sorted(result["peak_worker_bytes"])


def _expected(image: Path) -> np.ndarray:
    data = zarr.open_array(str(image / "s0"), mode="r")[...].astype(np.float32)
    smooth = ndimage.gaussian_filter(data, 2.0)
    return ndimage.label(smooth > threshold_otsu(smooth))[0]


def test_a_small_run_stays_in_the_process_and_equals_scipy_and_worker_processes(
    tmp_path: Path, sample_image
) -> None:
    config = nuclei_config(tmp_path)
    inside = sample_image((16, 96, 80), (8, 48, 40), copy_to=tmp_path / "in.zarr")
    outside = sample_image((16, 96, 80), (8, 48, 40), copy_to=tmp_path / "out.zarr")
    code, result, err = _run(config, inside, None)  # the default: 256MiB
    assert code == 0, err
    # one worker: threads of the command's process, no dask scheduler or port
    assert _workers(result) == ["in-process"]
    labels = zarr.open_array(str(inside / "labels/nuclei/s0"), mode="r")[...]
    assert same_partition(labels, _expected(inside))
    code, other, err = _run(config, outside, "0")
    assert code == 0, err
    assert all(w.startswith("tls://127.0.0.1:") for w in _workers(other))
    assert len(_workers(other)) == 2
    assert tree_hash(inside / "labels", chunks_only=True) == tree_hash(
        outside / "labels", chunks_only=True
    )


def test_larger_runs_and_a_zero_limit_start_worker_processes(tmp_path: Path, sample_image) -> None:
    image = sample_image((16, 96, 80), (8, 48, 40), copy_to=tmp_path / "a.zarr")
    # 16x96x80 float32 scratch is 480 KiB: above 100KiB, worker processes
    code, result, err = _run(nuclei_config(tmp_path), image, "100KiB", "--overwrite")
    assert code == 0, err
    assert all(w.startswith("tls://") for w in _workers(result))
    # the config's own limit, when the environment does not set one
    never = nuclei_config(tmp_path, {"in_process_max": "0"})
    code, result, err = _run(never, image, None, "--overwrite")
    assert code == 0, err
    assert all(w.startswith("tls://") for w in _workers(result))


def test_a_bad_limit_is_refused_in_one_line(
    tmp_path: Path, sample_image, cli: Cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The command in this process (refused before any cluster starts: a process each
    took 3 s more of imports)."""
    image = sample_image((16, 96, 80), (8, 48, 40), copy_to=tmp_path / "a.zarr")
    before = tree_hash(image)
    args = ["--input", str(image), "--json", "--no-warm"]
    monkeypatch.setenv("NGFF_ENGINE_IN_PROCESS_MAX", "lots")
    code, _, err = cli(["run", str(nuclei_config(tmp_path)), *args])
    assert code == 2
    assert err.strip() == (
        "error: NGFF_ENGINE_IN_PROCESS_MAX: 'lots' is not a size such as 32MiB or 0"
    ), err
    bad = tmp_path / "bad.yaml"
    bad.write_text(nuclei_config(tmp_path).read_text() + "cluster:\n  in_process_max: lots\n")
    monkeypatch.delenv("NGFF_ENGINE_IN_PROCESS_MAX")  # the config's value
    code, _, err = cli(["run", str(bad), *args])
    assert code == 2 and "in_process_max" in err and len(err.strip().splitlines()) == 1, err
    assert "Traceback" not in err
    assert tree_hash(image) == before


@pytest.mark.parametrize("shape", [(64, 64), (12, 40, 52)])
def test_in_process_outputs_equal_scipy(tmp_path: Path, sample_image, shape) -> None:
    image = sample_image(shape, copy_to=tmp_path / "i.zarr")
    code, result, err = _run(nuclei_config(tmp_path), image, "1MiB")
    assert code == 0, err
    assert _workers(result) == ["in-process"]
    labels = zarr.open_array(str(image / "labels/nuclei/s0"), mode="r")[...]
    assert same_partition(labels, _expected(image))
    assert result["objects"]["nuclei"] == int(labels.max())


def test_an_in_process_run_opens_no_port_and_imports_no_dask(tmp_path: Path, sample_image) -> None:
    """Threads of the command's process: no scheduler, no worker, no dashboard, so
    nothing listens and dask.distributed is not even imported (0.23 s of a small run's
    imports, plus 0.7 to 1.0 s of starting a scheduler and worker); the workers' fork
    server the API started on first use is stopped before the tasks run, so that it does
    not take a core from them."""
    image = sample_image((16, 96, 80), (8, 48, 40), copy_to=tmp_path / "a.zarr")
    script = f"""
import json, os, sys, psutil, engine
seen, children = set(), set()
def progress(stage, total):
    seen.update(
        (c.laddr.ip, c.laddr.port)
        for c in psutil.Process(os.getpid()).net_connections("inet")
        if c.status == "LISTEN"
    )
    children.update(" ".join(c.cmdline()) for c in psutil.Process().children(recursive=True))
    return lambda n: None
announced = []
result = engine.run({str(nuclei_config(tmp_path))!r}, {str(image)!r}, warm=False,
                    progress=progress, announce=announced.append)
print(json.dumps({{"workers": sorted(result.peak_worker_bytes), "listening": sorted(seen),
                  "announced": announced, "objects": result.labels,
                  "children": sorted(children),
                  "imported": sorted(m for m in ("distributed", "dask", "tornado")
                                     if m in sys.modules)}}))
"""
    env = engine_environment()
    env["NGFF_ENGINE_IN_PROCESS_MAX"] = "32MiB"
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300
    )
    assert proc.returncode == 0, proc.stderr
    found = json.loads(proc.stdout)
    assert found["workers"] == ["in-process"]
    assert found["objects"]["nuclei"] > 0
    assert found["listening"] == [] and found["imported"] == [], found
    assert not any("forkserver" in child for child in found["children"]), found["children"]
    assert not any("dashboard" in line for line in found["announced"])


HEAP_PROBE = """
import sys
import numpy as np
from engine.core.worker_env import use_worker_heap
if sys.argv[1] == "worker heap":
    use_worker_heap()
array = np.ones(4 * 2**20, np.float32)  # 16 MiB
heap = 0
for line in open("/proc/self/maps"):
    if line.rstrip().endswith("[heap]"):
        start, stop = (int(a, 16) for a in line.split()[0].split("-"))
        heap = stop - start
print(heap)
"""


@pytest.mark.parametrize("heap", ["worker heap", "default"])
def test_the_workers_heap_keeps_memory_for_the_next_task(heap: str) -> None:
    """What a run on threads sets (engine/execute/run_pool.py), as a worker has it
    (engine/core/worker_env.py): the heap grows 64 MiB at a time, so a 16 MiB array and
    the next task's come from memory already there; glibc's default grows it by 128 KiB
    (and maps such an array on pages of its own until a larger one was freed). The
    probe starts without MALLOC_* settings in its environment."""
    environment = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    probe = [sys.executable, "-c", HEAP_PROBE, heap]
    found = subprocess.run(probe, capture_output=True, text=True, check=True, env=environment)
    grown = int(found.stdout) >= HEAP_TOP_PAD_BYTES
    assert grown == (heap == "worker heap")
