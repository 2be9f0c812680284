"""Bad input at the CLI: one clear line, a non-zero exit, no traceback, nothing changed.

Each class of mistake goes through `engine.cli.main([...])` (some also through a real
`ngff-engine` process). Every test checks: exit code 2 (the user's to fix), a message
that names the culprit (step, field, ROI, path), no "Traceback", and that every file
under the input image (and any output already in it) is byte-identical afterwards.

Runs that get past validation use one shared dask cluster (`--scheduler`).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
import zarr

from engine import Pipeline, run
from engine.cli.commands import main
from engine.core.errors import ConfigError
from engine.io.sample_zarr import write_sample
from engine.state.records import list_runs

TESTS = Path(__file__).resolve().parent


def base_steps() -> list[dict[str, Any]]:
    return [
        {"name": "smooth", "op": "gaussian", "input": "image", "params": {"sigma": 1.0}},
        {
            "name": "mask",
            "op": "threshold",
            "input": "smooth",
            "params": {"method": "value", "value": 500},
        },
        {
            "name": "nuclei",
            "op": "label",
            "input": "mask",
            "output": {"kind": "label", "name": "nuclei"},
        },
    ]


# --- fixtures and helpers ------------------------------------------------------------------


@pytest.fixture(scope="module")
def image3d(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("img3d") / "image.zarr"
    return Path(write_sample(path, (8, 64, 64), (4, 32, 32), "0.5", seed=1))


@pytest.fixture(scope="module")
def image2d(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("img2d") / "image.zarr"
    return Path(write_sample(path, (64, 64), (32, 32), "0.4", seed=2))


@pytest.fixture(scope="module")
def image_with_output(tmp_path_factory: pytest.TempPathFactory, scheduler: str) -> Path:
    """An image with labels/nuclei already written by the base pipeline (sigma 1)."""
    path = tmp_path_factory.mktemp("without") / "image.zarr"
    write_sample(path, (8, 64, 64), (4, 32, 32), "0.4", seed=3)
    run(Pipeline.build({"steps": base_steps()}), input=path, scheduler=scheduler)
    assert (path / "labels" / "nuclei" / ".zattrs").exists()
    return path


def write_config(
    folder: Path,
    steps: list[dict[str, Any]] | None = None,
    rois: dict[str, Any] | None = None,
    name: str = "pipeline.yaml",
) -> Path:
    data: dict[str, Any] = {}
    if rois is not None:
        data["rois"] = rois
    data["steps"] = base_steps() if steps is None else steps
    path = folder / name
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def tree_hash(root: Path, skip: tuple[str, ...] = ()) -> dict[str, str]:
    """Every file and folder under `root`, with a hash of each file's bytes."""
    out = {}
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root).as_posix()
        if any(rel == s or rel.startswith(s + "/") for s in skip):
            continue
        out[rel] = hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "<dir>"
    return out


def cli(capsys: pytest.CaptureFixture[str], argv: list[str]) -> tuple[int, str]:
    """Exit code and everything printed; argparse's usage errors exit through SystemExit."""
    try:
        code = main(argv)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def run_args(config: Path, image: Path, scheduler: str, *extra: str) -> list[str]:
    return ["run", str(config), "--input", str(image), "--scheduler", scheduler, *extra]


def expect_user_error(
    capsys: pytest.CaptureFixture[str],
    argv: list[str],
    watched: list[Path],
    *words: str,
) -> str:
    """Run the CLI; it must refuse with exit 2 and one line naming `words`, changing nothing."""
    before = {p: tree_hash(p) for p in watched}
    code, output = cli(capsys, argv)
    assert code == 2, output
    assert "Traceback" not in output
    lines = [line for line in output.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one line, got: {output!r}"
    line = lines[0]
    assert line.startswith("error: "), line
    for word in words:
        assert word in line, f"{word!r} not in {line!r}"
    for p in watched:
        assert tree_hash(p) == before[p], f"{p} changed"
    return line


# --- the config --------------------------------------------------------------------------


def _edit(index: int, **changes: Any) -> list[dict[str, Any]]:
    steps = base_steps()
    for key, value in changes.items():
        if value is None:
            steps[index].pop(key, None)
        else:
            steps[index][key] = value
    return steps


def _with_eval(reference: str) -> list[dict[str, Any]]:
    return [
        *base_steps(),
        {
            "name": "eval",
            "op": "evaluate",
            "input": "nuclei",
            "params": {"reference": reference},
            "output": {"kind": "table", "name": "nuclei_eval"},
        },
    ]


CONFIG_CASES = {
    "unknown op": (_edit(0, op="gausian"), ["step 'smooth'", "gausian", "unknown op"]),
    "unknown param": (
        _edit(0, params={"sigmaa": 1.0}),
        ["step 'smooth'", "sigmaa", "unknown parameter", "known: sigma"],
    ),
    "unknown param beside a good one": (
        _edit(0, params={"sigma": 1.0, "truncat": 3.0}),
        ["step 'smooth'", "truncat", "unknown parameter"],
    ),
    "negative sigma": (
        _edit(0, params={"sigma": -1.0}),
        ["step 'smooth'", "params.sigma", "greater than 0"],
    ),
    "negative sigma in a per-axis list": (
        _edit(0, params={"sigma": [1.0, -2.0, 2.0]}),
        ["step 'smooth'", "params.sigma", "greater than 0", "-2.0"],
    ),
    "per-axis sigma of the wrong length": (
        _edit(0, params={"sigma": [1.0, 2.0]}),
        ["step 'smooth'", "sigma has 2 values", "3 spatial axes"],
    ),
    "threshold value without value": (
        _edit(1, params={"method": "value"}),
        ["step 'mask'", "params", "needs a 'value'"],
    ),
    "threshold unknown method": (
        _edit(1, params={"method": "triangle"}),
        ["step 'mask'", "params.method", "'otsu', 'li' or 'percentile'"],
    ),
    "missing required param": (
        _edit(0, params={}),
        ["step 'smooth'", "params.sigma", "required"],
    ),
    "duplicate step names": (
        _edit(1, name="smooth", input="image"),
        ["unique", "repeated: smooth"],
    ),
    "dangling input": (_edit(1, input="smoth"), ["step 'mask'", "'smoth'", "no step"]),
    "cycle": (_edit(0, input="nuclei"), ["cycle", "smooth", "mask", "nuclei"]),
    "unused step": (
        [*base_steps(), {"name": "extra", "op": "median", "input": "smooth"}],
        ["step 'extra'", "no output and no step uses it"],
    ),
    "label output of a float step": (
        [{**_edit(0)[0], "output": {"kind": "label", "name": "blur"}}],
        ["step 'smooth'", "label", "float32"],
    ),
    "function that cannot be imported": (
        _edit(0, op="function", params={"function": "no_such_mod:f"}),
        ["step 'smooth'", "params.function", "no_such_mod"],
    ),
    "function missing in its module": (
        _edit(0, op="function", params={"function": "user_functions:nope"}),
        ["step 'smooth'", "params.function", "'nope'"],
    ),
    "function path without a colon": (
        _edit(0, op="function", params={"function": "user_functions.explode"}),
        ["step 'smooth'", "params.function", "module:function"],
    ),
    "label connectivity above 3": (
        _edit(2, params={"connectivity": 4}),
        ["step 'nuclei'", "params.connectivity", "less than or equal to 3"],
    ),
    "unknown reference label image": (
        _with_eval("nosuch"),
        ["step 'eval'", "params.reference 'nosuch'", "no label image", "truth, annotations"],
    ),
    "reference step without a label output": (
        _with_eval("mask"),
        ["step 'eval'", "params.reference 'mask'", "without a label output"],
    ),
    "evaluate with a label output": (
        _with_eval("truth")[:-1]
        + [{**_with_eval("truth")[-1], "output": {"kind": "label", "name": "e"}}],
        ["step 'eval'", "op 'evaluate' needs output", "kind: table"],
    ),
    "evaluate with a table as input": (
        [
            *_with_eval("truth"),
            {
                **_with_eval("truth")[-1],
                "name": "e2",
                "input": "eval",
                "output": {"kind": "table", "name": "e2"},
            },
        ],
        ["step 'e2'", "input 'eval'", "is a table"],
    ),
    "versions value not allowed": (
        _edit(2, output={"kind": "label", "name": "nuclei", "versions": "kep"}),
        ["step 'nuclei'", "output.versions", "'kep' is not allowed", "allowed: keep"],
    ),
}


@pytest.mark.parametrize("case", list(CONFIG_CASES))
def test_bad_config(
    case: str, tmp_path: Path, image3d: Path, scheduler: str, capsys: pytest.CaptureFixture[str]
) -> None:
    steps, words = CONFIG_CASES[case]
    config = write_config(tmp_path, steps)
    expect_user_error(capsys, run_args(config, image3d, scheduler), [image3d], *words)


def test_bad_yaml_syntax(
    tmp_path: Path, image3d: Path, scheduler: str, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "broken.yaml"
    config.write_text(
        "steps:\n"
        "  - {name: smooth, op: gaussian, params: {sigma: 1.0}}\n"
        "  - {name: mask, op: threshold, input: smooth\n"
    )
    expect_user_error(
        capsys,
        run_args(config, image3d, scheduler),
        [image3d],
        str(config),
        "not valid YAML",
        "line ",
    )


def test_yaml_that_is_not_a_mapping(
    tmp_path: Path, image3d: Path, scheduler: str, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "list.yaml"
    config.write_text("- smooth\n- mask\n")
    expect_user_error(
        capsys, run_args(config, image3d, scheduler), [image3d], str(config), "mapping"
    )


def test_config_file_missing(
    tmp_path: Path, image3d: Path, scheduler: str, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "nowhere.yaml"
    expect_user_error(
        capsys, run_args(config, image3d, scheduler), [image3d], str(config), "cannot read"
    )


def test_debug_flag_shows_the_exception(tmp_path: Path, image3d: Path, scheduler: str) -> None:
    """The one-line message is a choice of the CLI: --debug lets the exception through."""
    config = write_config(tmp_path, _edit(0, op="gausian"))
    with pytest.raises(ConfigError, match="gausian"):
        main(["--debug", *run_args(config, image3d, scheduler)])


# --- ROIs ----------------------------------------------------------------------------------


ROI_CASES = {
    # name: (rois in the config, --roi, words)
    "outside in pixels": ({"big": {"z": [0, 4], "y": [32, 100]}}, "big", ["roi 'big'", "outside"]),
    "outside in micrometers": (
        {"far": {"units": "micrometer", "y": [10.0, 40.0], "x": [0.0, 8.0]}},
        "far",
        ["roi 'far'", "outside", "y: 20..80"],
    ),
    "negative start": ({"neg": {"x": [-4, 8]}}, "neg", ["roi 'neg'", "outside"]),
    "stop before start": ({"bad": {"z": [5, 2]}}, "bad", ["roi 'bad'", "z", "not after"]),
    "stop equals start": ({"flat": {"y": [8, 8]}}, "flat", ["roi 'flat'", "y", "not after"]),
    "unknown name": (
        {"preview": {"z": [0, 4]}},
        "nosuch",
        ["roi 'nosuch'", "not defined", "preview"],
    ),
    "axis the image lacks": (
        {"tt": {"t": [0, 1]}},
        "tt",
        ["roi 'tt'", "axis 't'", "'z', 'y', 'x'"],
    ),
    "unknown unit": (
        {"inch": {"units": "inch", "x": [0.0, 1.0]}},
        "inch",
        ["roi 'inch'", "units 'inch'"],
    ),
    "fractional pixels": ({"frac": {"x": [0.5, 8]}}, "frac", ["roi 'frac'", "whole numbers"]),
    "level that does not exist": (
        {"deep": {"level": 7, "x": [0, 4]}},
        "deep",
        ["roi 'deep'", "level 7"],
    ),
}


@pytest.mark.parametrize("case", list(ROI_CASES))
def test_bad_roi_in_config(
    case: str, tmp_path: Path, image3d: Path, scheduler: str, capsys: pytest.CaptureFixture[str]
) -> None:
    rois, name, words = ROI_CASES[case]
    config = write_config(tmp_path, rois=rois)
    argv = run_args(config, image3d, scheduler, "--roi", name)
    expect_user_error(capsys, argv, [image3d], *words)


CLI_ROI_CASES = {
    "not numbers": ("a:b,0:8", ["--roi 'a:b,0:8'", "'a:b'"]),
    "empty range": ("0:4,,0:8", ["--roi '0:4,,0:8'", "''"]),
    "too many ranges": ("0:1,0:1,0:1,0:1", ["more ranges", "'z', 'y', 'x'"]),
    "wrong separator": ("0:4;0:8", ["--roi '0:4;0:8'", "not start:stop"]),
    "stop before start": ("5:2,0:8,0:8", ["--roi '5:2,0:8,0:8'", "z: stop 2", "not after"]),
    "unknown axis letter": ("q=0:2", ["--roi 'q=0:2'", "axis 'q'"]),
    "axis given twice": ("z=0:2,z=1:3", ["--roi 'z=0:2,z=1:3'", "twice"]),
    "axis the image lacks": ("t=0:1,0:4", ["axis 't'", "not an axis of the image"]),
    "outside the image": ("0:4,0:100,0:8", ["outside", "y: 0..100"]),
}


@pytest.mark.parametrize("case", list(CLI_ROI_CASES))
def test_bad_cli_roi(
    case: str, tmp_path: Path, image3d: Path, scheduler: str, capsys: pytest.CaptureFixture[str]
) -> None:
    text, words = CLI_ROI_CASES[case]
    config = write_config(tmp_path)
    argv = run_args(config, image3d, scheduler, "--roi", text)
    line = expect_user_error(capsys, argv, [image3d], *words)
    assert "validation error" not in line and "pydantic" not in line


# --- the image ------------------------------------------------------------------------------


def test_input_path_missing(
    tmp_path: Path, scheduler: str, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config(tmp_path)
    missing = tmp_path / "nowhere.zarr"
    expect_user_error(
        capsys, run_args(config, missing, scheduler), [], str(missing), "no such file"
    )
    assert not missing.exists()


def test_no_input_at_all(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = write_config(tmp_path)
    expect_user_error(capsys, ["run", str(config)], [], "no input image", "--input")


def test_input_is_a_plain_directory(
    tmp_path: Path, scheduler: str, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "cell.tif").write_bytes(b"II*\x00not really")
    config = write_config(tmp_path)
    expect_user_error(
        capsys, run_args(config, folder, scheduler), [folder], str(folder), "not a zarr group"
    )


def test_input_is_zarr_but_not_ome_zarr(
    tmp_path: Path, scheduler: str, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "plain.zarr"
    group = zarr.open_group(str(path), mode="w", zarr_format=3)
    group.create_array("data", shape=(16, 16), chunks=(8, 8), dtype="uint8")
    config = write_config(tmp_path)
    expect_user_error(
        capsys,
        run_args(config, path, scheduler),
        [path],
        str(path),
        "not an OME-Zarr image",
        "multiscales",
    )


def test_label_connectivity_above_ndim(
    tmp_path: Path, image2d: Path, scheduler: str, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config(tmp_path, _edit(2, params={"connectivity": 3}))
    expect_user_error(
        capsys,
        run_args(config, image2d, scheduler),
        [image2d],
        "step 'nuclei'",
        "connectivity 3",
        "2 spatial axes",
    )


def test_channel_on_an_image_without_channels(
    tmp_path: Path, image3d: Path, scheduler: str, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config(tmp_path, _edit(0, input={"source": "image", "channel": 1}))
    expect_user_error(
        capsys,
        run_args(config, image3d, scheduler),
        [image3d],
        "step 'smooth'",
        "input.channel",
        "no c axis",
    )


# --- outputs already there ---------------------------------------------------------------------


def test_existing_output_with_a_different_config(
    tmp_path: Path, image_with_output: Path, scheduler: str, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config(tmp_path, _edit(0, params={"sigma": 2.0}))
    line = expect_user_error(
        capsys,
        run_args(config, image_with_output, scheduler),
        [image_with_output],
        "labels/nuclei",
        "different step config",
        "sigma",
        "--overwrite",
    )
    assert "1.0" in line and "2.0" in line  # old and new value


def test_existing_output_with_the_same_config_needs_update(
    tmp_path: Path, image_with_output: Path, scheduler: str, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config(tmp_path)
    expect_user_error(
        capsys,
        run_args(config, image_with_output, scheduler, "--roi", "0:4,0:32,0:32"),
        [image_with_output],
        "labels/nuclei",
        "same config",
        "--update",
        "--overwrite",
    )


def test_overwrite_and_update_together(
    tmp_path: Path, image_with_output: Path, scheduler: str, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config(tmp_path)
    before = tree_hash(image_with_output)
    argv = run_args(config, image_with_output, scheduler, "--overwrite", "--update")
    code, output = cli(capsys, argv)
    assert code == 2
    assert "Traceback" not in output
    assert "--update" in output and "--overwrite" in output and "not allowed" in output
    assert tree_hash(image_with_output) == before


def test_overwrite_and_update_together_in_python(image_with_output: Path) -> None:
    before = tree_hash(image_with_output)
    with pytest.raises(ConfigError, match="overwrite=True and update=True"):
        run(
            Pipeline.build({"steps": base_steps()}),
            input=image_with_output,
            overwrite=True,
            update=True,
        )
    assert tree_hash(image_with_output) == before


def test_existing_output_not_written_by_the_engine(
    tmp_path: Path, image3d: Path, scheduler: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """The sample's labels/truth was not made by a pipeline: an output of that name is
    refused, saying so (not by listing every field of the pipeline as a 'difference')."""
    steps = _edit(2, output={"kind": "label", "name": "truth"})
    config = write_config(tmp_path, steps)
    line = expect_user_error(
        capsys,
        run_args(config, image3d, scheduler),
        [image3d],
        "labels/truth",
        "--overwrite",
    )
    assert "different step config" not in line, line
    assert "not written by" in line, line


def test_existing_output_path_that_is_not_a_zarr_group(
    tmp_path: Path, scheduler: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """A stray folder where the output would go is someone else's: refuse, do not crash."""
    image = Path(write_sample(tmp_path / "image.zarr", (8, 64, 64), (4, 32, 32), "0.5"))
    stray = image / "labels" / "nuclei"
    stray.mkdir()
    (stray / "README.txt").write_text("my notes, not an output")
    config = write_config(tmp_path)
    expect_user_error(
        capsys,
        run_args(config, image, scheduler),
        [image],
        "labels/nuclei",
        "--overwrite",
    )


# --- user functions --------------------------------------------------------------------------


def _exploding_steps() -> list[dict[str, Any]]:
    steps = base_steps()
    steps[0] = {
        "name": "custom",
        "op": "function",
        "input": "image",
        "params": {"function": "user_functions:explode", "dtype": "float32"},
    }
    steps[1]["input"] = "custom"
    return steps


def test_user_function_that_raises(
    tmp_path: Path, scheduler: str, capsys: pytest.CaptureFixture[str]
) -> None:
    image = Path(write_sample(tmp_path / "image.zarr", (8, 64, 64), (4, 32, 32), "0.4"))
    config = write_config(tmp_path, _exploding_steps())
    # `_engine/` is the engine's own folder (run records, markers): not part of the image
    before = tree_hash(image, skip=("_engine",))
    code, output = cli(capsys, run_args(config, image, scheduler))
    assert code != 0
    assert "Traceback" not in output
    assert tree_hash(image, skip=("_engine",)) == before
    assert not (image / "labels" / "nuclei").exists()
    # the failed run keeps its scratch and done markers for --resume, and says why it failed
    (record,) = list_runs(image)
    assert record["state"] == "failed" and "failed on chunk" in record["error"]
    assert not (image / "_engine" / "locks").exists(), "lock left"
    (line,) = [line for line in output.splitlines() if line.startswith("error: ")]
    for word in ("failed on chunk [", "ValueError", "cannot handle a block"):
        assert word in line, line
    # the step at fault is the one whose function raised, not the label step it feeds
    assert "step 'custom'" in line, line


# --- through a real process ----------------------------------------------------------------------


def _executable() -> str:
    beside = Path(sys.executable).with_name("ngff-engine")
    found = str(beside) if beside.exists() else shutil.which("ngff-engine")
    assert found, "the ngff-engine command is not installed"
    return found


def _subprocess(argv: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(TESTS), env.get("PYTHONPATH")) if p)
    return subprocess.run(
        [_executable(), *argv], cwd=cwd, env=env, capture_output=True, text=True, timeout=120
    )


def test_subprocess_unknown_op(tmp_path: Path, image3d: Path, scheduler: str) -> None:
    config = write_config(tmp_path, _edit(0, op="gausian"))
    before = tree_hash(image3d)
    proc = _subprocess(run_args(config, image3d, scheduler), tmp_path)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stdout + proc.stderr
    assert "step 'smooth'" in proc.stderr and "gausian" in proc.stderr
    assert proc.stdout == ""
    assert tree_hash(image3d) == before


def test_subprocess_missing_input_relative_path(tmp_path: Path, scheduler: str) -> None:
    config = write_config(tmp_path)
    proc = _subprocess(run_args(config, Path("missing.zarr"), scheduler), tmp_path)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stdout + proc.stderr
    assert "missing.zarr" in proc.stderr and "no such file" in proc.stderr
    assert not (tmp_path / "missing.zarr").exists()


def test_subprocess_user_function_that_raises(tmp_path: Path, scheduler: str) -> None:
    image = Path(write_sample(tmp_path / "image.zarr", (8, 64, 64), (4, 32, 32), "0.5"))
    config = write_config(tmp_path, _exploding_steps())
    before = tree_hash(image, skip=("_engine",))
    proc = _subprocess(run_args(config, image, scheduler), tmp_path)
    assert proc.returncode != 0
    assert "Traceback" not in proc.stdout + proc.stderr
    assert "failed on chunk" in proc.stderr and "cannot handle a block" in proc.stderr
    assert tree_hash(image, skip=("_engine",)) == before


# --- evaluation, versions, diff ---------------------------------------------------------------


def test_reference_of_another_shape(
    tmp_path: Path, scheduler: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """labels/truth of a 2D sample under a 3D image: refused, naming both shapes."""
    image = Path(write_sample(tmp_path / "image.zarr", (8, 64, 64), (4, 32, 32), "0.5"))
    other = Path(write_sample(tmp_path / "flat.zarr", (48, 64), (32, 32), "0.5"))
    shutil.copytree(other / "labels" / "truth", image / "labels" / "flat")
    config = write_config(tmp_path, _with_eval("flat"))
    expect_user_error(
        capsys,
        run_args(config, image, scheduler),
        [image],
        "step 'eval'",
        "params.reference 'flat'",
        "[48, 64]",
        "[8, 64, 64]",
        "label output 'nuclei'",
    )
    argv = ["diff", str(image), "truth", "flat", "--scheduler", scheduler]
    expect_user_error(capsys, argv, [image], "labels/truth", "labels/flat", "one shape")


def test_reference_written_by_this_run(
    tmp_path: Path, image3d: Path, scheduler: str, capsys: pytest.CaptureFixture[str]
) -> None:
    steps = _with_eval("nuclei_out")
    steps[2]["output"] = {"kind": "label", "name": "nuclei_out"}
    steps[3]["params"] = {"reference": "nuclei_out"}
    image = tmp_path / "image.zarr"
    shutil.copytree(image3d, image)
    shutil.copytree(image / "labels" / "truth", image / "labels" / "nuclei_out")
    config = write_config(tmp_path, steps)
    expect_user_error(
        capsys,
        run_args(config, image, scheduler, "--overwrite"),
        [image],
        "step 'eval'",
        "labels/nuclei_out is written by step 'nuclei'",
        "reference: nuclei",
    )


def test_diff_of_a_missing_label(
    image3d: Path, scheduler: str, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["diff", str(image3d), "truth", "nosuch", "--scheduler", scheduler]
    expect_user_error(
        capsys, argv, [image3d], "labels/nosuch", "no such label image", "truth, annotations"
    )
    argv = ["diff", str(image3d), "truth", "annotations", "--roi", "0:4,0:99,0:8", "--json"]
    expect_user_error(capsys, argv, [image3d], "outside", "y: 0..64")
