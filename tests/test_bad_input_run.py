"""Bad input at the CLI, found while running: a user function that raises (in-process and
through a real `ngff-engine` process), an evaluation reference of another shape or
written by the same run, a diff of a missing label image (the contract: tests/bad_input.py)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from bad_input import edit, exploding_steps, run_args, with_eval, write_config
from conftest import (
    Cli,
    SampleImages,
    engine_command,
    engine_environment,
    expect_user_error,
    tree_hash,
)

from engine.state.records import list_runs


def _subprocess(argv: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [engine_command(), *argv],
        cwd=cwd,
        env=engine_environment(),
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_user_function_that_raises(
    tmp_path: Path,
    sample_image: SampleImages,
    scheduler: str,
    cli: Cli,
) -> None:
    image = sample_image((8, 64, 64), (4, 32, 32), "0.4", copy_to=tmp_path / "image.zarr")
    config = write_config(tmp_path, exploding_steps())
    # `_engine/` is the engine's own folder (run records, markers): not part of the image
    before = tree_hash(image, skip=("_engine",))
    result = cli(run_args(config, image, scheduler))
    code, output = result.code, result.output
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


def test_subprocess_unknown_op(tmp_path: Path, image3d: Path, scheduler: str) -> None:
    config = write_config(tmp_path, edit(0, op="gausian"))
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


def test_subprocess_user_function_that_raises(
    tmp_path: Path, sample_image: SampleImages, scheduler: str
) -> None:
    image = sample_image((8, 64, 64), (4, 32, 32), "0.5", copy_to=tmp_path / "image.zarr")
    config = write_config(tmp_path, exploding_steps())
    before = tree_hash(image, skip=("_engine",))
    proc = _subprocess(run_args(config, image, scheduler), tmp_path)
    assert proc.returncode != 0
    assert "Traceback" not in proc.stdout + proc.stderr
    assert "failed on chunk" in proc.stderr and "cannot handle a block" in proc.stderr
    assert tree_hash(image, skip=("_engine",)) == before


def test_reference_of_another_shape(
    tmp_path: Path,
    sample_image: SampleImages,
    scheduler: str,
    cli: Cli,
) -> None:
    """labels/truth of a 2D sample under a 3D image: refused, naming both shapes."""
    image = sample_image((8, 64, 64), (4, 32, 32), "0.5", copy_to=tmp_path / "image.zarr")
    other = sample_image((48, 64), (32, 32), "0.5")
    shutil.copytree(other / "labels" / "truth", image / "labels" / "flat")
    config = write_config(tmp_path, with_eval("flat"))
    expect_user_error(
        cli,
        run_args(config, image, scheduler),
        [image],
        "step 'eval'",
        "params.reference 'flat'",
        "[48, 64]",
        "[8, 64, 64]",
        "label output 'nuclei'",
    )
    argv = ["diff", str(image), "truth", "flat", "--scheduler", scheduler]
    expect_user_error(cli, argv, [image], "labels/truth", "labels/flat", "one shape")


def test_reference_written_by_this_run(
    tmp_path: Path, image3d: Path, scheduler: str, cli: Cli
) -> None:
    steps = with_eval("nuclei_out")
    steps[2]["output"] = {"kind": "label", "name": "nuclei_out"}
    steps[3]["params"] = {"reference": "nuclei_out"}
    image = tmp_path / "image.zarr"
    shutil.copytree(image3d, image)
    shutil.copytree(image / "labels" / "truth", image / "labels" / "nuclei_out")
    config = write_config(tmp_path, steps)
    expect_user_error(
        cli,
        run_args(config, image, scheduler, "--overwrite"),
        [image],
        "step 'eval'",
        "labels/nuclei_out is written by step 'nuclei'",
        "reference: nuclei",
    )


def test_diff_of_a_missing_label(image3d: Path, scheduler: str, cli: Cli) -> None:
    argv = ["diff", str(image3d), "truth", "nosuch", "--scheduler", scheduler]
    expect_user_error(
        cli, argv, [image3d], "labels/nosuch", "no such label image", "truth, annotations"
    )
    argv = ["diff", str(image3d), "truth", "annotations", "--roi", "0:4,0:99,0:8", "--json"]
    expect_user_error(cli, argv, [image3d], "outside", "y: 0..64")
