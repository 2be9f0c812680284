"""The warm engine (engine/execute/warm.py): started by the first command, reused by the
next (same scheduler process), stopped by `stop` (no process of it left) or after its
idle time, and its results equal those of another cluster's run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
import zarr

from engine import Pipeline
from engine.cli.commands import main
from engine.cli.entry import goes_to_warm_engine
from engine.execute import warm
from engine.execute.placement import uses_warm
from engine.runs.runner import run
from tests.conftest import blobs, write_image

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def engine_dir(tmp_path, monkeypatch):
    where = tmp_path / "engine"
    monkeypatch.setenv("NGFF_ENGINE_WARM_DIR", str(where))
    monkeypatch.setenv("NGFF_ENGINE_WARM", "1")
    yield where
    warm.stop()


def pipeline() -> Pipeline:
    return (
        Pipeline()
        .add("smooth", "gaussian", "image", sigma=1.5)
        .add("mask", "threshold", "smooth", method="otsu")
        .add("nuclei", "label", "mask", {"kind": "label", "name": "nuclei"})
    )


def engine_processes(engine: warm.WarmEngine) -> list[psutil.Process]:
    """The server and every process under it (nannies, workers), alive."""
    found = []
    try:
        server = psutil.Process(engine.pid)
        found = [server, *server.children(recursive=True)]
    except psutil.NoSuchProcess:
        pass
    for pid in engine.worker_pids:
        try:
            found.append(psutil.Process(pid))
        except psutil.NoSuchProcess:
            pass
    return found


def alive(processes: list[psutil.Process]) -> list[psutil.Process]:
    living = []
    for p in processes:
        try:
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                living.append(p)
        except psutil.NoSuchProcess:
            pass
    return living


def test_second_command_reuses_the_engine_equal_output_and_stop(
    engine_dir, tmp_path, scheduler, capsys
):
    data = blobs((32, 64, 64), seed=5)
    warm_image = write_image(tmp_path / "warm.zarr", data, (16, 32, 32), levels=1)
    cold_image = write_image(tmp_path / "cold.zarr", data, (16, 32, 32), levels=1)
    config = tmp_path / "p.yaml"
    config.write_text(pipeline().to_yaml())

    assert main(["run", str(config), "--input", str(warm_image), "--quiet",
                 "--idle-timeout", "120"]) == 0  # fmt: skip
    first = warm.find()
    assert first is not None and first.address.startswith("tls://127.0.0.1:")
    assert (engine_dir.stat().st_mode & 0o777) == 0o700
    assert (engine_dir / "tls-key.pem").stat().st_mode & 0o077 == 0
    before = engine_processes(first)

    # the next commands (another ROI through the command's own entry point, then the
    # whole image again): the same engine
    # it runs in the engine's command server: the command imports none of the engine's
    # libraries (engine/cli/remote.py); the server starts once the cluster is up
    deadline = time.monotonic() + 120
    while not (engine_dir / "command.sock").exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "engine", "run", str(config), "--input",
         str(warm_image), "--quiet", "--overwrite", "--roi", "0:16,0:32,0:32", "--json"],
        capture_output=True, text=True, timeout=300,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["tasks_done"] > 0
    imported = {
        line.split("|")[-1].strip() for line in done.stderr.splitlines() if "import time:" in line
    }
    assert "engine.execute.warm" in imported
    assert not imported & {"numpy", "zarr", "distributed", "dask", "pydantic", "rich"}
    # a bad ROI through the command server: one line, exit 2
    done = subprocess.run(
        [sys.executable, "-m", "engine", "run", str(config), "--input", str(warm_image),
         "--roi", "0:1,0:16,0:32,0:32", "--overwrite"],
        capture_output=True, text=True, timeout=300,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )  # fmt: skip
    assert done.returncode == 2
    assert "--roi" in done.stderr and "Traceback" not in done.stderr
    assert main(["run", str(config), "--input", str(warm_image), "--quiet",
                 "--overwrite"]) == 0  # fmt: skip
    second = warm.find()
    assert second == first  # same scheduler pid, address and workers
    assert {p.pid for p in alive(engine_processes(second))} == {p.pid for p in alive(before)}

    capsys.readouterr()
    assert main(["status", "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)["engine"]
    assert shown["address"] == first.address and shown["workers"] == first.workers
    assert shown["idle_timeout"] == 120
    assert main(["status"]) == 0
    assert first.address in capsys.readouterr().out

    # a run on another cluster writes the same labels, byte for byte
    run(pipeline(), cold_image, scheduler=scheduler)
    warm_labels = zarr.open_array(str(warm_image / "labels/nuclei/s0"), mode="r")[...]
    cold_labels = zarr.open_array(str(cold_image / "labels/nuclei/s0"), mode="r")[...]
    assert warm_labels.max() > 1
    assert warm_labels.dtype == cold_labels.dtype
    assert np.array_equal(warm_labels, cold_labels)

    assert main(["stop"]) == 0
    assert "stopped the warm engine" in capsys.readouterr().out
    assert warm.find() is None
    assert not alive(before), alive(before)
    assert main(["stop"]) == 0
    assert "no warm engine runs" in capsys.readouterr().out


def test_engine_stops_by_itself_after_its_idle_time(engine_dir, monkeypatch):
    monkeypatch.setenv("NGFF_ENGINE_IDLE_TIMEOUT", "1.5")
    engine = warm.ensure(workers=1)
    processes = engine_processes(engine)
    assert alive(processes)
    deadline = time.monotonic() + 60
    while alive(processes) and time.monotonic() < deadline:
        time.sleep(0.2)
        warm._reap()
    assert not alive(processes)
    assert warm.find() is None
    assert not (engine_dir / warm.INFO).exists()


def test_which_runs_go_to_the_warm_engine(monkeypatch):
    monkeypatch.setenv("NGFF_ENGINE_WARM", "1")
    cores = warm.default_workers()
    assert uses_warm(None, None) and uses_warm(None, cores)
    assert not uses_warm(None, cores + 1)  # another size: a cluster of its own
    assert not uses_warm(False, None)
    assert not uses_warm(None, None, {"gpu": 1.0})
    assert goes_to_warm_engine(["run", "c.yaml"])
    assert not goes_to_warm_engine(["run", "c.yaml", "--no-warm"])
    assert not goes_to_warm_engine(["run", "c.yaml", "--workers", "3"])
    monkeypatch.setenv("NGFF_ENGINE_WARM", "0")
    assert not uses_warm(None, None) and uses_warm(True, None)
    assert not goes_to_warm_engine(["run", "c.yaml"])


def test_bad_idle_timeout_is_one_line(engine_dir, tmp_path, capsys):
    config = tmp_path / "p.yaml"
    config.write_text(pipeline().to_yaml())
    image = write_image(tmp_path / "i.zarr", blobs((8, 16, 16)), (8, 16, 16), levels=1)
    assert main(["run", str(config), "--input", str(image), "--idle-timeout", "0"]) == 2
    err = capsys.readouterr()
    assert "--idle-timeout must be more than 0 seconds" in err.out + err.err
    assert "Traceback" not in err.out + err.err
    assert warm.find() is None


def test_plan_starts_the_engine_in_the_background(engine_dir, tmp_path, capsys):
    """`plan` (and `preview`) start the engine without waiting for it, so that the run
    after them finds it ready; with --no-warm they start nothing."""
    config = tmp_path / "p.yaml"
    config.write_text(pipeline().to_yaml())
    image = write_image(tmp_path / "i.zarr", blobs((8, 32, 32)), (8, 16, 16), levels=1)
    assert main(["plan", str(config), "--input", str(image), "--no-warm"]) == 0
    assert warm.find() is None and not warm._starting()
    started = time.monotonic()
    assert main(["plan", str(config), "--input", str(image), "--idle-timeout", "30"]) == 0
    assert time.monotonic() - started < 30  # it did not wait for the engine
    assert warm._starting() or warm.find() is not None
    deadline = time.monotonic() + warm.START_TIMEOUT
    while warm.find() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    engine = warm.find()
    assert engine is not None and warm.state()["idle_timeout"] == 30
    assert warm.stop() == engine


def test_a_relative_input_from_another_folder_than_the_engines(engine_dir, tmp_path, monkeypatch):
    """The warm engine's workers run in the folder it started in: a later command in
    another folder names its image relative to its own folder, and still finds it."""
    data = blobs((16, 32, 32), seed=7)
    first, second = tmp_path / "a", tmp_path / "b"
    for folder in (first, second):
        folder.mkdir()
        write_image(folder / "img.zarr", data, (16, 32, 32), levels=1)
        (folder / "p.yaml").write_text(pipeline().to_yaml())
    monkeypatch.chdir(first)
    assert main(["run", "p.yaml", "--input", "img.zarr", "--quiet"]) == 0
    assert warm.find() is not None
    monkeypatch.chdir(second)
    assert main(["run", "p.yaml", "--input", "img.zarr", "--quiet"]) == 0
    labels = zarr.open_array(str(second / "img.zarr" / "labels/nuclei/s0"))[:]
    assert labels.max() > 0
