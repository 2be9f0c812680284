"""The micro-scheduler on a real cluster: chunk-level pipelining across stages, priority
ROIs, sharded outputs written by many workers, and the memory check before a run."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import zarr
from conftest import blobs, same_partition, write_image
from scipy import ndimage

from engine import Pipeline
from engine.core.errors import ConfigError
from engine.core.worker_env import HEAP_ENVIRONMENT
from engine.io.metadata import Axis
from engine.io.ngff_write import LevelSpec, create_image
from engine.io.sample_zarr import write_sample
from engine.runs.runner import run

REPO = Path(__file__).resolve().parents[1]

SMOOTH = {"name": "smooth", "op": "gaussian", "params": {"sigma": 1.5}}


def chunk_mtimes(array: Path) -> dict[tuple[int, ...], int]:
    """Modification time (ns) of every stored chunk file, by chunk index."""
    return {
        tuple(int(p) for p in f.relative_to(array / "c").parts): f.stat().st_mtime_ns
        for f in (array / "c").rglob("*")
        if f.is_file()
    }


def test_pyramid_chunks_start_before_the_level_below_is_finished(tmp_path, scheduler):
    image = write_image(tmp_path / "img.zarr", blobs((32, 256, 256)), (8, 32, 32))
    pipeline = Pipeline.model_validate(
        {"steps": [{**SMOOTH, "output": {"kind": "image", "name": "smooth"}}]}
    )
    run(pipeline, image, scheduler=scheduler)
    s0 = chunk_mtimes(image / "results/smooth/s0")
    s1 = chunk_mtimes(image / "results/smooth/s1")
    assert len(s0) == 4 * 8 * 8 and len(s1) == 4 * 4 * 4
    # no barrier between the levels: some s1 chunk exists before the last s0 chunk
    assert min(s1.values()) < max(s0.values())


def test_priority_roi_is_computed_first(tmp_path, scheduler):
    image = write_image(tmp_path / "img.zarr", blobs((32, 256, 256)), (8, 32, 32))
    pipeline = Pipeline.model_validate(
        {
            "rois": {"corner": {"z": [24, 32], "y": [192, 256], "x": [192, 256], "preview": True}},
            "steps": [{**SMOOTH, "output": {"kind": "image", "name": "smooth"}}],
        }
    )
    run(pipeline, image, scheduler=scheduler)
    times = chunk_mtimes(image / "results/smooth/s0")
    preview = [t for (z, y, x), t in times.items() if z == 3 and y >= 6 and x >= 6]
    others = sorted(t for (z, y, x), t in times.items() if not (z == 3 and y >= 6 and x >= 6))
    assert len(preview) == 4
    # the far corner comes last in Z order; as the preview ROI it is among the first
    assert max(preview) < others[len(others) // 2]


def test_sharded_outputs_written_by_many_workers_are_complete(tmp_path):
    data = blobs((32, 128, 128), seed=3)
    image = write_image(tmp_path / "img.zarr", data, (8, 16, 16), levels=1)
    pipeline = Pipeline.model_validate(
        {
            "steps": [
                {**SMOOTH, "output": {"kind": "image", "name": "smooth", "shards": [16, 64, 64]}},
                {
                    "name": "mask",
                    "op": "threshold",
                    "input": "smooth",
                    "params": {"method": "value", "value": 1500},
                },
                {
                    "name": "nuclei",
                    "op": "label",
                    "input": "mask",
                    "output": {"kind": "label", "name": "nuclei", "shards": [32, 32, 32]},
                },
            ]
        }
    )
    run(pipeline, image, workers=6)
    smooth = zarr.open_array(str(image / "results/smooth/s0"))
    labels = zarr.open_array(str(image / "labels/nuclei/s0"))
    assert smooth.shards == (16, 64, 64) and labels.shards == (32, 32, 32)
    expected = ndimage.gaussian_filter(data.astype(np.float32), 1.5)
    got = smooth[...]
    for index in np.ndindex(4, 8, 8):  # every chunk
        box = tuple(slice(i * c, (i + 1) * c) for i, c in zip(index, (8, 16, 16), strict=True))
        np.testing.assert_allclose(got[box], expected[box], rtol=1e-5, err_msg=str(index))
    reference, _ = ndimage.label(expected > 1500)
    assert same_partition(labels[...], reference)


def test_sharded_output_on_ngff_04_is_refused(tmp_path):
    image = write_image(tmp_path / "img.zarr", blobs((16, 32, 32)), (8, 16, 16), version="0.4")
    pipeline = Pipeline.model_validate(
        {"steps": [{**SMOOTH, "output": {"kind": "image", "name": "s", "shards": [16, 32, 32]}}]}
    )
    with pytest.raises(ConfigError, match=r"step 'smooth': output.shards needs zarr v3"):
        run(pipeline, image, workers=1)
    assert not (image / "results").exists()


def test_plan_that_cannot_fit_a_worker_is_refused_with_the_numbers(tmp_path, scheduler):
    """Metadata only: one 1024x1024x2048 chunk; no voxel is ever read."""
    root = zarr.open_group(str(tmp_path / "big.zarr"), mode="w", zarr_format=3)
    axes = tuple(Axis(n, "space", "micrometer") for n in "zyx")
    shape = (1024, 1024, 2048)
    level = LevelSpec("s0", shape, shape, (1.0, 1.0, 1.0), (0.0, 0.0, 0.0))
    create_image(root, "", version="0.5", axes=axes, levels=[level], dtype="uint16", name="big")
    pipeline = Pipeline.model_validate(
        {"steps": [{**SMOOTH, "output": {"kind": "image", "name": "smooth"}}]}
    )
    with pytest.raises(ConfigError) as refused:
        run(pipeline, tmp_path / "big.zarr", scheduler=scheduler)
    message = str(refused.value)
    assert "step 'smooth'" in message and "GiB" in message and "memory limit" in message
    assert not (tmp_path / "big.zarr/results").exists()


def test_run_reports_peak_and_projected_worker_memory(tmp_path, scheduler):
    image = write_image(tmp_path / "img.zarr", blobs((16, 64, 64)), (8, 32, 32))
    pipeline = Pipeline.model_validate(
        {"steps": [{**SMOOTH, "output": {"kind": "image", "name": "smooth"}}]}
    )
    result = run(pipeline, image, scheduler=scheduler)
    summary = json.loads(json.dumps(result.to_json()))
    peaks = summary["peak_worker_bytes"]
    assert len(peaks) == 2 and all(50 * 2**20 < p < 2**31 for p in peaks.values())
    assert summary["projected_worker_bytes"] > max(peaks.values())


def test_cli_prints_the_dask_dashboard_address(tmp_path, scheduler, capsys):
    from engine.cli.commands import main

    image = write_image(tmp_path / "img.zarr", blobs((16, 64, 64)), (8, 32, 32))
    config = tmp_path / "smooth.yaml"
    config.write_text(
        "steps:\n  - {name: smooth, op: gaussian, params: {sigma: 1.5},"
        " output: {kind: image, name: smooth}}\n"
    )
    assert main(["run", str(config), "--input", str(image), "--scheduler", scheduler]) == 0
    assert "dask dashboard: http" in capsys.readouterr().err


def _worker_settings() -> tuple[str | None, bool]:
    import os

    import dask

    heap = {name: os.environ.get(name) for name in HEAP_ENVIRONMENT}
    return heap, dask.config.get("distributed.worker.profile.enabled")


def test_local_workers_get_the_heap_pad_and_no_profiler():
    """The workers a run starts keep freed memory for the next task and do not sample
    their stacks (engine/execute/cluster.py: worker_config)."""
    from engine.execute.cluster import connect

    with connect(workers=1) as client:
        (settings,) = client.run(_worker_settings).values()
    assert settings == (HEAP_ENVIRONMENT, False)


FORKED_WORKERS = """
import json, multiprocessing.forkserver, os, sys
from engine.core.worker_env import HEAP_ENVIRONMENT, start_worker_server, worker_environment

def probe():
    import dask
    profile = dask.config.get("distributed.worker.profile.enabled")
    heap = {name: os.environ.get(name) for name in HEAP_ENVIRONMENT}
    return [heap, profile, "engine.worker.chain" in sys.modules, os.getppid()]

if __name__ == "__main__":
    start_worker_server(worker_environment())
    from engine.execute.cluster import connect
    with connect(workers=2) as client:
        got = list(client.run(probe).values())
    print(json.dumps({"server": multiprocessing.forkserver._forkserver._forkserver_pid,
                      "workers": got}))
"""


def test_command_forks_local_workers_from_a_server_that_imported_the_engine(tmp_path):
    """engine/cli/entry.py: workers come from the fork server, with the engine imported
    before their first task and the environment of spawned workers."""
    script = tmp_path / "forked.py"
    script.write_text(FORKED_WORKERS)
    done = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=120, cwd=REPO
    )
    assert done.returncode == 0, done.stderr
    found = json.loads(done.stdout)
    assert found["workers"] == [[HEAP_ENVIRONMENT, False, True, found["server"]]] * 2


def test_command_runs_the_pipeline_with_forked_workers(tmp_path):
    """`python -m engine run` end to end (the command's own entry point), then the
    outputs read back."""
    sample = write_sample(str(tmp_path / "s.zarr"), (24, 80, 80), chunks=(12, 40, 40))
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "engine",
            "--debug",
            "run",
            str(REPO / "configs/nuclei.yaml"),
            "--input",
            sample,
            "--workers",
            "2",
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    labels = zarr.open_array(f"{result['outputs']['nuclei']}/s0")[...]
    assert labels.max() == result["objects"]["nuclei"] > 0


@pytest.mark.parametrize(
    ("argv", "starts"),
    [
        (["run", "c.yaml"], True),
        (["--debug", "run", "c.yaml", "--workers", "2"], True),
        (["run", "c.yaml", "--scheduler", "tcp://x:1"], False),
        (["run", "c.yaml", "--cluster", "slurm"], False),
        (["run", "c.yaml", "--cluster=slurm"], False),
        (["run", "c.yaml", "--cluster", "local"], True),
        (["plan", "c.yaml"], False),
        ([], False),
    ],
)
def test_which_command_lines_start_the_worker_server(argv, starts):
    from engine.cli.entry import starts_local_workers

    assert starts_local_workers(argv) is starts


def test_command_with_forked_workers_reports_bad_input_with_exit_2(tmp_path):
    """The command's own entry point ends a run without the interpreter's teardown
    (engine/cli/entry.py); its message and exit code still come through."""
    done = subprocess.run(
        [sys.executable, "-m", "engine", "run", str(tmp_path / "missing.yaml")],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
    )
    assert done.returncode == 2
    assert "missing.yaml: cannot read config" in done.stderr
