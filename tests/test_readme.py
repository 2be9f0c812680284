"""Every command of the README runs, as a new user runs it top to bottom, on the sizes
the README names: the commands of its ```bash blocks (less comments) and the `$ ` lines
of its ```console blocks, in one folder with the repository's configs, through the
installed `ngff-engine` command. Outputs the README shows after a command are checked
where they are exact (the objects counted, the picture's size and counts).

Not run, and why (listed so a new command cannot slip out unnoticed):
- making the venv and installing the package: this test runs in it;
- `bash .ci/run`: the test suite itself;
- `napari ...`: a window; tests/test_viewers.py opens the same through napari's
  ViewerModel, headless.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parents[1]
NOT_RUN = ("python3 -m venv", ".venv/bin/pip install", "pip install", "bash .ci/run", "napari ")


def readme_commands() -> list[tuple[str, list[str]]]:
    """(command, the output lines the README shows after it) in README order."""
    text = (ROOT / "README.md").read_text()
    found: list[tuple[str, list[str]]] = []
    for lang, body in re.findall(r"^ *```(bash|console)\n(.*?)^ *```", text, re.S | re.M):
        for raw in body.splitlines():
            line = raw.strip()
            if lang == "console" and not line.startswith("$ "):
                if found and line:
                    found[-1][1].append(line)
                continue
            line = line.removeprefix("$ ")
            line = re.sub(r"\s+#.*$", "", line).strip()
            if not line or line.startswith("#"):
                continue
            for part in line.split(" && "):
                part = part.replace(".venv/bin/", "")
                if not part.startswith(NOT_RUN):
                    found.append((part, []))
    return found


def wait_for_job(job: str, timeout: float = 300) -> None:
    import time

    ends = time.monotonic() + timeout
    while time.monotonic() < ends:
        queued = subprocess.run(["squeue", "-h", "-j", job], capture_output=True, text=True)
        if not queued.stdout.strip():
            return
        time.sleep(1)
    raise AssertionError(f"batch job {job} still queued after {timeout} s")


def test_the_readme_names_its_commands() -> None:
    commands = [c for c, _ in readme_commands()]
    assert "ngff-engine sample sample.zarr" in commands  # the main job, at its default size
    assert any(c.startswith("ngff-engine submit") for c in commands)
    assert sum(c.startswith("ngff-engine preview") for c in commands) >= 4


def test_every_readme_command_runs(tmp_path: Path) -> None:
    shutil.copytree(ROOT / "configs", tmp_path / "configs")
    os.symlink(ROOT / "slurm", tmp_path / "slurm")
    bin_dir = str(Path(sys.executable).parent)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    # as a new user's shell has it: the warm engine and the in-process path for small runs
    # on (tests/conftest.py turns both off for the other tests), the engine in a folder of
    # this test's own (not the user's ~/.ngff-engine, which another checkout's engine may
    # hold). The README's own `status` and `stop` then act on it, and its commands take
    # 81 s instead of 102 s (2 cores at a load of 1.5; 172 s against 198 s at a load of 7).
    env.pop("NGFF_ENGINE_WARM", None)
    env.pop("NGFF_ENGINE_IN_PROCESS_MAX", None)
    env["NGFF_ENGINE_WARM_DIR"] = str(tmp_path / "warm-engine")
    try:
        run_the_readme(tmp_path, env)
    finally:  # the warm engine the README's runs started: no process of it outlives the test
        subprocess.run([engine_command(), "stop"], env=env, capture_output=True, timeout=120)


def engine_command() -> str:
    found = shutil.which("ngff-engine", path=str(Path(sys.executable).parent))
    assert found, "the ngff-engine command is not installed beside this Python"
    return found


def run_the_readme(tmp_path: Path, env: dict[str, str]) -> None:
    """Every README command in order, in `tmp_path`; the outputs it shows checked."""
    job = None
    for command, shown in readme_commands():
        if job is not None:
            command = re.sub(r"^ngff-engine status \d+$", f"ngff-engine status {job}", command)
        proc = subprocess.run(
            ["bash", "-c", command],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert proc.returncode == 0, f"{command}\n{proc.stdout}\n{proc.stderr[-3000:]}"
        if command.startswith("ngff-engine status") and job is not None:
            wait_for_job(job)  # the batch job writes into this folder: let it finish
        assert "Traceback" not in proc.stderr, f"{command}\n{proc.stderr[-3000:]}"
        found = re.search(r"submitted batch job (\d+)", proc.stdout)
        if found:
            job = found.group(1)
        for line in shown:  # what the README prints after it, where it is exact
            if line.startswith("wrote ") or "objects" in line or " -> " in line:
                assert line in proc.stdout, f"{command}: README shows\n{line}\ngot\n{proc.stdout}"
