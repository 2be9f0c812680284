"""The README's Python snippet, unmodified, as users run it: a script file, stdin,
`python -c`, and a Jupyter kernel; no `if __name__ == "__main__":` guard.

Local workers come from the engine's fork server and do not run the caller's
`__main__` again (engine/execute/fork_server.py): before, a script file ran the whole
run again in every worker ("Nanny failed to start") and stdin failed on '<stdin>'.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import Cli

from engine.io.sample_zarr import write_sample

ROOT = Path(__file__).parents[1]
SHAPE = (64, 256, 256)  # the sample size the README names


def readme_snippet() -> str:
    """The README's first Python block: the pipeline built and run in Python."""
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    snippet = next(b for b in blocks if "from engine import Pipeline, run" in b)
    assert "__main__" not in snippet
    return snippet


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return Path(write_sample(tmp_path_factory.mktemp("api") / "api.zarr", SHAPE))


def workdir(base: Path, tmp_path: Path) -> Path:
    """A folder as the README's user has it: the sample, and the configs."""
    shutil.copytree(base, tmp_path / "api.zarr")
    shutil.copytree(ROOT / "configs", tmp_path / "configs")
    return tmp_path


def python(cwd: Path, *argv: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, *argv],
        cwd=cwd,
        input=stdin,
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )


def check_ran(proc: subprocess.CompletedProcess) -> None:
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert "{'nuclei': 'api.zarr/labels/nuclei'} {'nuclei': " in proc.stdout, proc.stdout


@pytest.mark.parametrize("how", ["script", "stdin", "-c"])
def test_the_readme_snippet_runs_unmodified(base: Path, tmp_path: Path, how: str) -> None:
    cwd = workdir(base, tmp_path)
    snippet = readme_snippet()
    if how == "script":
        (cwd / "api.py").write_text(snippet)
        proc = python(cwd, "api.py")
    elif how == "stdin":
        proc = python(cwd, "-", stdin=snippet)
    else:
        proc = python(cwd, "-c", snippet)
    check_ran(proc)
    # one run: no worker ran the script again (it would have recorded a run of its own)
    assert len([r for r in (cwd / "api.zarr/_engine/runs").iterdir() if r.is_dir()]) == 1


def test_the_readme_snippet_in_a_jupyter_kernel(base: Path, tmp_path: Path) -> None:
    from jupyter_client.manager import start_new_kernel

    cwd = workdir(base, tmp_path)
    manager, client = start_new_kernel(
        kernel_name="python3", cwd=str(cwd), env={**os.environ, "PYTHONPATH": str(ROOT)}
    )
    try:
        outputs: list[str] = []

        def keep(message: dict) -> None:
            content = message["content"]
            if message["msg_type"] == "stream":
                outputs.append(content["text"])
            elif message["msg_type"] == "error":
                outputs.append(f"error: {content['ename']}: {content['evalue']}")

        reply = client.execute_interactive(readme_snippet(), timeout=300, output_hook=keep)
        text = "".join(outputs)
        assert reply["content"]["status"] == "ok", text
        assert "{'nuclei': 'api.zarr/labels/nuclei'} {'nuclei': " in text, text
    finally:
        client.stop_channels()
        manager.shutdown_kernel(now=True)


def test_errors_in_python_name_python_arguments(
    base: Path, tmp_path: Path, scheduler: str, cli: Cli
) -> None:
    """After the README's main command (labels/nuclei for the whole image), the snippet
    on its ROI is refused, telling a Python user `update=True`, not `--update`. The
    command runs in this process on the session's cluster (as a process of its own with
    a cluster of its own it took 5 s more)."""
    cwd = workdir(base, tmp_path)
    command = ["run", str(cwd / "configs/nuclei.yaml"), "--input", str(cwd / "api.zarr")]
    done = cli([*command, "--quiet", "--scheduler", scheduler])
    assert done.code == 0, done.output
    proc = python(cwd, "-c", readme_snippet())
    assert proc.returncode == 1
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("engine.core.errors.OutputConflict: output labels/nuclei exists"), last
    assert "use update=True to add this ROI to it or overwrite=True to replace it" in last
    assert "--" not in last
    # the command keeps its flags
    again = cli([*command, "--roi", "test"])
    assert again.code == 2
    assert "use --update to add this ROI to it or --overwrite" in again.err
