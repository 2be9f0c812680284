"""A small run from a cold command (issue 18): the command starts no worker server it
will not use (engine/cli/entry.py, `runs_on_threads`) and imports only what a run on
threads needs."""

from __future__ import annotations

import contextlib
import io
import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, engine_environment, nuclei_config
from rich.console import Console

from engine.cli.entry import runs_on_threads
from engine.cli.render import LazyConsole

# what the command does not import before a run needs it: rich prints (a --json run
# into a pipe never does), ome-zarr-models validates unseen metadata only, dask runs
# clusters, the pixel classifier's ops come with a pipeline that names them
LAZY = ("rich", "ome_zarr_models", "pydantic_zarr", "dask", "distributed", "tasks.classifier")


def test_the_command_imports_what_a_run_on_threads_needs_only() -> None:
    script = "import engine.cli.commands, json, sys; "
    script += f"print(json.dumps([m for m in {LAZY!r} if m in sys.modules]))"
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, cwd=REPO
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == []


def test_the_entry_points_op_sizes_are_the_ops_own() -> None:
    """engine/cli/entry.py tells a run's largest read from the ops its config names:
    what it assumes each writes per voxel is what the op says (0: the input's)."""
    import numpy as np

    from engine.cli.entry import OP_OUTPUT_BYTES
    from tasks import OPS

    for dtype in (np.uint8, np.uint16, np.float32, np.float64):
        for name, size in OP_OUTPUT_BYTES.items():
            written = OPS[name].dtype(None, np.dtype(dtype)).itemsize
            assert written == (size or np.dtype(dtype).itemsize), name


def test_ops_load_by_name_on_first_use() -> None:
    script = """
import json, sys
from tasks import OPS
before = "tasks.classifier" in sys.modules
names = {name: OPS[name].name for name in OPS}
print(json.dumps([before, "tasks.classifier" in sys.modules, names, len(OPS), "x" in OPS]))
"""
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, cwd=REPO
    )
    assert done.returncode == 0, done.stderr
    before, after, names, count, unknown = json.loads(done.stdout)
    assert (before, after, count, unknown) == (False, True, 12, False)
    assert all(spec == name for name, spec in names.items()), names


@pytest.mark.parametrize("version", ["0.4", "0.5"])
def test_the_entry_point_tells_a_small_run_from_the_input_metadata(
    tmp_path: Path, sample_image, monkeypatch: pytest.MonkeyPatch, version: str
) -> None:
    image = str(sample_image((16, 64, 64), (8, 32, 32), version))
    config = str(nuclei_config(tmp_path))
    monkeypatch.delenv("NGFF_ENGINE_IN_PROCESS_MAX")  # the default, 256MiB
    assert runs_on_threads(["run", config, "--input", image, "--workers", "2"])
    assert runs_on_threads(["--debug", "run", config, f"--input={image}", "--no-warm"])
    # 16x64x64 voxels of 4 bytes (gaussian's float32, label's uint32): 256 KiB
    monkeypatch.setenv("NGFF_ENGINE_IN_PROCESS_MAX", "256KiB")
    assert runs_on_threads(["run", config, "--input", image])
    # an op the entry point does not know counts 8 bytes per voxel
    other = tmp_path / "other.yaml"
    other.write_text(Path(config).read_text().replace("op: label", "op: instance"))
    assert not runs_on_threads(["run", str(other), "--input", image])
    monkeypatch.setenv("NGFF_ENGINE_IN_PROCESS_MAX", "512KiB")
    assert runs_on_threads(["run", str(other), "--input", image])
    for limit in ("255KiB", "0", "lots"):
        monkeypatch.setenv("NGFF_ENGINE_IN_PROCESS_MAX", limit)
        assert not runs_on_threads(["run", config, "--input", image])
    monkeypatch.delenv("NGFF_ENGINE_IN_PROCESS_MAX")
    # in doubt, the worker server starts as before
    assert not runs_on_threads(["run", config])  # the config's input: not read here
    assert not runs_on_threads(["run", config, "--input", image, "--dashboard", ":8787"])
    assert not runs_on_threads(["run", config, "--input", f"http://127.0.0.1:1/{image}"])
    assert not runs_on_threads(["run", config, "--input", str(tmp_path / "missing.zarr")])
    assert not runs_on_threads(["run", config, "--input", f"{image}/s0"])  # an array
    assert not runs_on_threads(["run", str(tmp_path / "missing.yaml"), "--input", image])
    slurm = str(nuclei_config(tmp_path, {"kind": "slurm"}))
    assert not runs_on_threads(["run", slurm, "--input", image])
    never = str(nuclei_config(tmp_path, {"in_process_max": "0"}))
    assert not runs_on_threads(["run", never, "--input", image])


SPY = """
import json, multiprocessing.forkserver, os, sys
started = []
ensure_running = multiprocessing.forkserver.ensure_running
def spy():
    started.append(1)
    ensure_running()
multiprocessing.forkserver.ensure_running = spy
exit_now = os._exit
def report(code):
    found = {"code": code, "servers": len(started), "rich": "rich" in sys.modules,
             "models": "ome_zarr_models" in sys.modules,
             "blas_threads": os.environ.get("OPENBLAS_NUM_THREADS")}
    sys.stdout.write("\\n" + json.dumps(found) + "\\n")
    sys.stdout.flush()
    exit_now(code)
os._exit = report
from engine.cli.entry import main
sys.argv = ["ngff-engine", *sys.argv[1:]]
main()
"""


def spied(tmp_path: Path, args: list[str], env: dict[str, str], timeout: float):
    """The command run through SPY: (its output before the report, the report)."""
    script = tmp_path / "spy.py"
    script.write_text(SPY)
    done = subprocess.run(
        [sys.executable, str(script), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
        env=env,
    )
    assert done.returncode == 0, done.stderr
    output, _, last = done.stdout.rstrip().rpartition("\n")
    return output, json.loads(last)


def test_a_small_run_starts_no_worker_server_and_a_large_one_does(
    tmp_path: Path, sample_image
) -> None:
    """The command's own entry point, as `--workers 2 --no-warm` runs it: on the small
    image the run goes to threads and no fork server was started; with a limit below
    the image, the server starts as before and the run goes to worker processes. A
    `--json` run into a pipe never imports rich, and ome-zarr-models only the first
    time it sees the image's metadata. A run on threads turns OpenBLAS's own threads
    off, as for a worker (engine/core/worker_env.py, `use_one_thread_libraries`)."""
    image = sample_image((16, 64, 64), (8, 32, 32), "0.5", copy_to=tmp_path / "i.zarr")
    found = []
    for limit in ("256MiB", "0", "256MiB"):
        env = {**engine_environment(), "NGFF_ENGINE_IN_PROCESS_MAX": limit}
        env.pop("OPENBLAS_NUM_THREADS", None)
        env["NGFF_ENGINE_CACHE_DIR"] = str(tmp_path / "cache")
        args = ["run", str(nuclei_config(tmp_path)), "--input", str(image), "--workers", "2"]
        args += ["--no-warm", "--json", "--overwrite"]
        output, report = spied(tmp_path, args, env, 300)
        found.append((report, sorted(json.loads(output)["peak_worker_bytes"])))
    small, large, again = found
    threads = {"code": 0, "servers": 0, "rich": False, "blas_threads": "1"}
    assert small == ({**threads, "models": True}, ["in-process"])
    # the image's label listing now names the run's labels: validated, the first time
    large[0].pop("blas_threads")  # dask's to set as it spawns workers, not the engine's
    assert large[0] == {"code": 0, "servers": 1, "rich": False, "models": True}
    assert len(large[1]) == 2 and all(w.startswith("tls://") for w in large[1])
    assert again == ({**threads, "models": False}, ["in-process"])


def test_json_printed_without_rich_is_what_rich_prints(monkeypatch: pytest.MonkeyPatch) -> None:
    """engine/cli/render.py: into a pipe or a file, `--json` output is rich's, byte for
    byte (indent 2, no ASCII escapes, long lines whole), without importing rich."""
    for name in ("FORCE_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE"):
        monkeypatch.delenv(name, raising=False)
    data = {
        "run_id": "20261201T232000-596659",
        "outputs": {"nuclei": "/a/long/" + "path/" * 40 + "labels/nuclei"},
        "roi": {"start": [0, 0], "stop": [64, 256]},
        "note": 'zoné µm \\ "quoted" [bold]not markup[/]',
        "empty": {},
        "none": None,
        "seconds": 0.733,
        "flags": [True, False],
    }
    text = json.dumps(data)
    for settings in ({"soft_wrap": True}, {}):
        rich_out = io.StringIO()
        Console(file=rich_out, **settings).print_json(text)
        plain = io.StringIO()
        with contextlib.redirect_stdout(plain):
            LazyConsole(**settings).print_json(text)
        assert plain.getvalue() == rich_out.getvalue()


VALIDATE = """
import json, sys
from engine.core.errors import NgffError
from engine.io.metadata import read_image
try:
    read_image(sys.argv[1])
    error = None
except NgffError as exc:
    error = str(exc)
print(json.dumps({"imported": "ome_zarr_models" in sys.modules, "error": error}))
"""


@pytest.mark.parametrize("version", ["0.4", "0.5"])
def test_attributes_ome_zarr_models_accepted_are_remembered_by_content(
    tmp_path: Path, sample_image, version: str
) -> None:
    """engine/io/validated.py: a second read of the same metadata in a new process does
    not import ome-zarr-models; invalid metadata is refused every time with the
    models' message; NGFF_ENGINE_CACHE_DIR=off validates every time."""
    image = sample_image((8, 32, 32), (4, 16, 16), version, copy_to=tmp_path / "i.zarr")

    def validate(cache: Path | str) -> dict:
        env = {**engine_environment(), "NGFF_ENGINE_CACHE_DIR": str(cache)}
        done = subprocess.run(
            [sys.executable, "-c", VALIDATE, str(image)],
            capture_output=True,
            text=True,
            timeout=120,
            env=env,
        )
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)

    cache = tmp_path / "cache"
    assert validate(cache) == {"imported": True, "error": None}  # unseen: validated
    assert validate(cache) == {"imported": False, "error": None}  # remembered
    assert validate("off") == {"imported": True, "error": None}
    metadata = image / (".zattrs" if version == "0.4" else "zarr.json")
    data = json.loads(metadata.read_text())
    attrs = data if version == "0.4" else data["attributes"]["ome"]
    axes = attrs["multiscales"][0]["axes"]
    axes[1] = dict(axes[2])  # two axes named x
    metadata.write_text(json.dumps(data))
    for _ in range(2):
        found = validate(cache)
        assert found["imported"]
        assert found["error"] == (
            f"{image}: invalid OME-Zarr {version} metadata at multiscales.0.axes: "
            "Value error, Axis names must be unique. Got ['z', 'x', 'x']"
        )
    assert len(list((cache / "validated").iterdir())) == 1


@pytest.mark.parametrize("command", ["info", "validate"])
def test_read_only_commands_end_without_the_interpreters_teardown(
    tmp_path: Path, sample_image, command: str
) -> None:
    """engine/cli/entry.py: `info` and `validate` print, then end through os._exit (the
    teardown of their modules took 0.33 s after `info`); output and exit code as before."""
    image = str(sample_image((16, 64, 64), (8, 32, 32), "0.5"))
    args = [command, image] if command == "info" else [command, str(nuclei_config(tmp_path))]
    args += ["--input", image] if command == "validate" else ["--json"]
    output, report = spied(tmp_path, args, engine_environment(), 120)
    assert report["code"] == 0
    if command == "info":
        assert json.loads(output)["image"]["version"] == "0.5"
    else:
        assert output.startswith("ok: config, image")
