"""Helpers for the tests of issue 13 (security, signals, overwrite): `ngff-engine run` as a
real process group on a slow user function (tests/user/slow.py), so a test can act while
the run is going."""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import yaml

TESTS = Path(__file__).parent


def executable() -> str:
    beside = Path(sys.executable).with_name("ngff-engine")
    found = str(beside) if beside.exists() else shutil.which("ngff-engine")
    assert found, "the ngff-engine command is not installed"
    return found


def environment(slow_seconds: float = 1.0) -> dict[str, str]:
    env = dict(os.environ)
    env["NGFF_TEST_SLOW_SECONDS"] = str(slow_seconds)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(TESTS), env.get("PYTHONPATH")) if p)
    return env


def slow_config(folder: Path, function: str = "user.slow:slow", name: str = "slow") -> Path:
    """One step: the user function, written as `results/slow` (an NGFF image)."""
    config = folder / f"{function.rpartition(':')[2]}.yaml"
    steps = [
        {
            "name": "slow",
            "op": "function",
            "input": "image",
            "params": {"function": function, "dtype": "float32"},
            "output": {"kind": "image", "name": name},
        }
    ]
    config.write_text(yaml.safe_dump({"steps": steps}))
    return config


def start_run(
    config: Path,
    image: Path,
    *extra: str,
    slow_seconds: float = 1.0,
    workers: int = 1,
    in_process: bool = False,
) -> subprocess.Popen:
    """The command on `image`, in a process group of its own; `in_process`: as a small run
    goes by default, in the command's process (tests/conftest.py turns that off)."""
    argv = [executable(), "run", str(config), "--input", str(image), "--workers", str(workers)]
    env = environment(slow_seconds)
    if in_process:
        env["NGFF_ENGINE_IN_PROCESS_MAX"] = "32MiB"
    return subprocess.Popen(
        [*argv, *extra],
        cwd=image.parent,
        env=env,
        start_new_session=True,  # its own process group: driver, fork server, workers
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_for(proc: subprocess.Popen, ready: Callable[[], bool], timeout: float = 90) -> None:
    started = time.monotonic()
    while not ready():
        if proc.poll() is not None:
            raise AssertionError(f"the run ended before the test's moment: {proc.stderr.read()}")
        assert time.monotonic() - started < timeout, "the test's moment never came"
        time.sleep(0.02)


def kill_group(proc: subprocess.Popen, signum: int = signal.SIGKILL) -> None:
    try:
        os.killpg(proc.pid, signum)
    except ProcessLookupError:
        pass
    proc.wait(timeout=60)


def file_sums(folder: Path, metadata: bool = True) -> dict[str, str]:
    """sha256 of every file under `folder` (with `metadata=False`, chunk files only:
    metadata holds run times)."""
    skip = () if metadata else ("zarr.json", ".zattrs", ".zarray", ".zgroup")
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name not in skip
    }


def marked_chunks(image: Path) -> int:
    """Chunks marked done in any run of the image (the marker files' records)."""
    from engine.state.markers import read_records

    return sum(
        len(read_records(p).positions) for p in image.glob("_engine/runs/*/markers/*") if p.is_dir()
    )
