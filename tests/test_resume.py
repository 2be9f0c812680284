"""Durability: done markers, --resume after SIGKILL, locks, run records, retries.

The kill tests run `ngff-engine run` as a process group with its own 2-worker local
cluster, SIGKILL the whole group at a given point (judged from the done markers on disk),
then `ngff-engine run --resume` on the shared test cluster, and compare every chunk file
of the output with an uninterrupted run's.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import zarr
from conftest import (
    BAD_VALUE,
    CONFIGS,
    Cli,
    SampleImages,
    engine_command,
    engine_environment,
    function_pipeline,
    image_with_a_bad_voxel,
    tree_hash,
)

from engine import Pipeline, run
from engine.core.errors import EngineError, OutputConflict
from engine.execute.executor import TaskFailed
from engine.state.markers import read_records
from engine.state.records import read_record

CONFIG = CONFIGS / "nuclei.yaml"
SHAPE, CHUNKS = (64, 256, 256), (16, 64, 64)
OUTPUT = "labels/nuclei"


def checksums(image: Path, output: str = OUTPUT) -> dict[str, str]:
    """sha256 of every chunk file of an output (metadata holds run times: left out)."""
    return tree_hash(image / output, chunks_only=True)


def marker_files(image: Path, stage: str) -> int:
    """Chunks marked done in a stage, in any run (a file per batch: cheap enough to poll)."""
    return sum(
        len(read_records(p).positions) for p in image.glob(f"_engine/runs/*/markers/{stage}")
    )


def marked(image: Path, run_id: str) -> dict[str, int]:
    base = image / "_engine/runs" / run_id / "markers"
    return {p.name: len(read_records(p).positions) for p in sorted(base.iterdir()) if p.is_dir()}


def run_ids(image: Path) -> list[str]:
    runs = image / "_engine/runs"
    return sorted(p.name for p in runs.iterdir() if p.is_dir()) if runs.exists() else []


@pytest.fixture(autouse=True, scope="module")
def per_chunk_labels():
    """Label per chunk (this image is small enough for one block, engine/plan/stitching.py):
    the kill points are in the stitching stages. tests/test_label_blocks.py kills a block."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("NGFF_ENGINE_LABEL_BLOCK_VOXELS", "0")
        yield


@pytest.fixture(scope="module")
def fresh(sample_image: SampleImages) -> Path:
    return sample_image(SHAPE, CHUNKS)


@pytest.fixture(scope="module")
def reference(fresh: Path, scheduler: str, tmp_path_factory: pytest.TempPathFactory) -> dict:
    image = tmp_path_factory.mktemp("reference") / "image.zarr"
    shutil.copytree(fresh, image)
    run(Pipeline.from_yaml(CONFIG), input=image, scheduler=scheduler)
    sums = checksums(image)
    assert len(sums) > 64
    return sums


def start(image: Path) -> subprocess.Popen:
    argv = [engine_command(), "run", str(CONFIG), "--input", str(image), "--workers", "2"]
    return subprocess.Popen(
        [*argv, "--quiet"],
        cwd=image.parent,
        env=engine_environment(),
        start_new_session=True,  # its own process group: driver, nannies, workers
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def kill_when(proc: subprocess.Popen, ready, timeout: float = 60) -> float:
    started = time.monotonic()
    while not ready():
        assert proc.poll() is None, f"the run ended before the kill point: {proc.stderr.read()}"
        assert time.monotonic() - started < timeout, "kill point never reached"
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    return time.monotonic() - started


def resume_cli(image: Path, scheduler: str, config: Path = CONFIG, *extra: str):
    argv = [engine_command(), "run", str(config), "--input", str(image), "--resume", "--json"]
    return subprocess.run(
        [*argv, "--scheduler", scheduler, *extra],
        cwd=image.parent,
        env=engine_environment(),
        capture_output=True,
        text=True,
        timeout=120,
    )


KILL_POINTS = {
    # name: (stage whose markers we watch, how many before the kill)
    "early": (None, 0),  # as soon as the run record exists
    "otsu-pass-0": ("mask.reduce-0", 12),  # smoothing + histogram range, stored input
    "local-labels": ("nuclei.label", 24),
    "relabel": ("nuclei.relabel", 24),  # the output exists and is half written
}


@pytest.mark.parametrize("point", list(KILL_POINTS))
def test_kill_and_resume(
    point: str, fresh: Path, reference: dict, scheduler: str, tmp_path: Path
) -> None:
    image = tmp_path / "image.zarr"
    shutil.copytree(fresh, image)
    stage, count = KILL_POINTS[point]
    proc = start(image)

    def ready() -> bool:
        if stage is None:
            return any(read_record(str(image), r) for r in run_ids(image))
        return marker_files(image, stage) >= count

    kill_when(proc, ready)
    (run_id,) = run_ids(image)
    before = marked(image, run_id) if (image / "_engine/runs" / run_id / "markers").exists() else {}
    lock = image / "_engine/locks" / OUTPUT
    assert lock.exists() and json.loads(lock.read_text())["run_id"] == run_id

    if point == "otsu-pass-0":
        _refusals(image, run_id, scheduler, tmp_path)
        assert marked(image, run_id) == before, "a refused --resume changed the markers"

    done = resume_cli(image, scheduler)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["run_id"] == run_id
    assert checksums(image) == reference
    record = read_record(str(image), run_id)
    assert record["state"] == "completed"
    assert record["attempts"][-1]["state"] == "killed"
    skipped = sum(before.values())
    # every chunk marked before the kill is skipped: only unmarked chunks are done again
    assert record["chunks_skipped"] == skipped
    assert record["chunks_done"] == record["tasks"] - skipped
    for name, n in before.items():
        assert record["stages"][name.replace(".", "/")]["skipped"] == n
    print(f"\n{point}: marked at kill {before}; resume computed {record['chunks_done']}")
    # scratch gone, record kept, lock released
    assert [p.name for p in (image / "_engine/runs" / run_id).iterdir()] == ["zarr.json"]
    assert not (image / "_engine/locks").exists()
    with pytest.raises(EngineError, match="no interrupted or failed run"):
        run(Pipeline.from_yaml(CONFIG), input=image, scheduler=scheduler, resume=True)


def _refusals(image: Path, run_id: str, scheduler: str, tmp_path: Path) -> None:
    """--resume with another step config or ROI is refused, naming what changed."""
    text = CONFIG.read_text().replace("sigma: 2.0", "sigma: 3.0")
    assert text != CONFIG.read_text()
    changed = tmp_path / "changed.yaml"
    changed.write_text(text)
    proc = resume_cli(image, scheduler, changed)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    for word in (run_id, "steps[smooth].params.sigma: 2.0 -> 3.0", "--resume"):
        assert word in proc.stderr, proc.stderr
    with pytest.raises(EngineError, match=f"resume=True: run {run_id} was on ROI"):
        roi = {"z": [0, 32], "y": [0, 256], "x": [0, 256]}
        run(Pipeline.from_yaml(CONFIG), input=image, roi=roi, scheduler=scheduler, resume=True)


def test_two_runs_on_one_output(
    fresh: Path, reference: dict, scheduler: str, tmp_path: Path
) -> None:
    image = tmp_path / "image.zarr"
    shutil.copytree(fresh, image)
    lock = image / "_engine/locks" / OUTPUT
    proc = start(image)
    try:
        started = time.monotonic()
        while not (lock.exists() and lock.stat().st_size > 0):
            assert proc.poll() is None and time.monotonic() - started < 60
            time.sleep(0.01)
        owner = json.loads(lock.read_text())
        with pytest.raises(OutputConflict) as refused:
            run(Pipeline.from_yaml(CONFIG), input=image, scheduler=scheduler)
        message = str(refused.value)
        assert OUTPUT in message and owner["run_id"] in message, message
        assert owner["pid"] == proc.pid
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    # the killed run's lock is stale now: --resume takes it over and finishes the job
    result = run(Pipeline.from_yaml(CONFIG), input=image, scheduler=scheduler, resume=True)
    assert result.run_id == owner["run_id"]
    assert checksums(image) == reference
    assert not lock.exists()


def test_failing_chunk_report_keeps_done_chunks(
    scheduler: str, sample_image: SampleImages, tmp_path: Path, cli: Cli
) -> None:
    image = image_with_a_bad_voxel(sample_image, tmp_path / "image.zarr", (4, 32, 32))
    fixed = tmp_path / "fixed"
    kwargs = {"value": BAD_VALUE, "unless": str(fixed)}
    pipeline = function_pipeline("user.ops:fail_on_value", kwargs)
    with pytest.raises(TaskFailed) as failed:
        run(pipeline, input=image, scheduler=scheduler)
    message = str(failed.value)
    for word in (
        "step 'custom'",
        "chunk [4:8, 32:64, 32:64]",
        "after 3 attempts",
        "ValueError: bad voxel value 65535",
        "ROI [0:8, 0:64, 0:64]",
    ):
        assert word in message, message
    (run_id,) = run_ids(image)
    record = read_record(str(image), run_id)
    assert record["state"] == "failed" and record["error"] == message
    assert record["chunks_failed"] == 1
    assert not (image / "_engine/locks").exists()

    markers = image / f"_engine/runs/{run_id}/markers/custom"
    grid = json.loads((markers / "layout.json").read_text())["grid"]
    done = [tuple(map(int, np.unravel_index(p, grid))) for p in read_records(markers).positions]
    assert grid == [2, 2, 2] and (1, 1, 1) not in done
    assert done and record["stages"]["custom"]["done"] == len(done)
    source = zarr.open_array(str(image / "s0"))[...]
    written = zarr.open_array(str(image / "results/custom/s0"))[...]
    for z, y, x in done:  # what was marked is written
        box = np.s_[4 * z : 4 * z + 4, 32 * y : 32 * y + 32, 32 * x : 32 * x + 32]
        np.testing.assert_array_equal(written[box], source[box])

    ran = cli(["status", str(image), "--json"])
    assert ran.code == 0
    (listed,) = json.loads(ran.out)["runs"]
    assert listed["state"] == "failed" and listed["error"] == message

    # the same image chunked otherwise (with this run's _engine/): --resume is refused
    other = image_with_a_bad_voxel(sample_image, tmp_path / "other.zarr", (4, 16, 16))
    shutil.copytree(image / "_engine", other / "_engine")
    with pytest.raises(EngineError, match=r"chunks \[4, 32, 32\].*\[4, 16, 16\]"):
        run(pipeline, input=other, scheduler=scheduler, resume=True)

    fixed.touch()  # the user fixes the function; the run goes on where it stopped
    result = run(pipeline, input=image, scheduler=scheduler, resume=True)
    assert result.run_id == run_id
    record = read_record(str(image), run_id)
    assert record["state"] == "completed"
    assert record["stages"]["custom"]["skipped"] == len(done)
    assert record["stages"]["custom"]["done"] == 8 - len(done)
    np.testing.assert_array_equal(zarr.open_array(str(image / "results/custom/s0"))[...], source)


def test_retries_get_flaky_chunks_through(
    scheduler: str, sample_image: SampleImages, tmp_path: Path
) -> None:
    image = sample_image((8, 64, 64), (4, 32, 32), "0.4", copy_to=tmp_path / "image.zarr")
    flags = tmp_path / "flags"
    flags.mkdir()
    pipeline = function_pipeline("user.ops:flaky", {"flags": str(flags)})
    result = run(pipeline, input=image, scheduler=scheduler)
    record = read_record(str(image), result.run_id)
    assert record["state"] == "completed" and record["chunks_done"] == record["tasks"]
    assert len(list(flags.iterdir())) >= 8  # every chunk failed once
    np.testing.assert_array_equal(
        zarr.open_array(str(image / "results/custom/s0"))[...],
        zarr.open_array(str(image / "s0"))[...],
    )
