"""`--overwrite` loses nothing (engine/runs/staging.py): until the new output is complete the
old one stays byte-identical and readable; a killed overwrite is completed by `--resume`;
a reader polling during an overwrite sees the whole old or the whole new array. A killed
`--update` is resumable too.

The runs are `ngff-engine run` processes on a slow user function (tests/user/slow.py:
`slow` gives the image + 1, `slower` the image + 2), killed with SIGKILL as a group."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import zarr
from safety_runs import (
    file_sums,
    kill_group,
    marked_chunks,
    slow_config,
    start_run,
    wait_for,
)

from engine.cli.commands import main
from engine.io.exchange import exchange_directories
from engine.io.sample_zarr import write_sample
from engine.runs.staging import swap_in

SHAPE, CHUNKS = (16, 64, 64), (4, 32, 32)  # 16 chunks at s0, 4 per pyramid level
OUTPUT = "results/slow"


# The two fixtures run on the session's cluster, in this process (the command as a process
# with a cluster of its own, as the tests' runs are, took 9.3 s for both at a load of 6);
# its workers pause 0 s in `slow` (NGFF_TEST_SLOW_SECONDS is not set for them).
@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory, scheduler: str) -> Path:
    """An image whose `results/slow` holds the image + 1 (from `slow`)."""
    folder = tmp_path_factory.mktemp("overwrite")
    image = Path(write_sample(folder / "image.zarr", SHAPE, CHUNKS, "0.5"))
    argv = ["run", str(slow_config(folder)), "--input", str(image), "--quiet"]
    assert main([*argv, "--scheduler", scheduler]) == 0
    return image


@pytest.fixture(scope="module")
def overwritten(
    written: Path, tmp_path_factory: pytest.TempPathFactory, scheduler: str
) -> dict[str, str]:
    """Chunk files of an uninterrupted overwrite with `slower`."""
    folder = tmp_path_factory.mktemp("reference")
    image = folder / "image.zarr"
    shutil.copytree(written, image)
    config = slow_config(folder, "user.slow:slower")
    argv = ["run", str(config), "--input", str(image), "--quiet", "--overwrite"]
    assert main([*argv, "--scheduler", scheduler]) == 0
    return file_sums(image / OUTPUT, metadata=False)


def _staging(image: Path) -> list[Path]:
    return sorted((image / "results").glob(".slow.new-*"))


def _provenance_written(image: Path) -> bool:
    """The new output's provenance is in its sibling: the moment before the swap."""
    for sibling in _staging(image):
        meta = sibling / "zarr.json"
        if meta.exists() and "config_hash" in meta.read_text():
            return True
    return False


def _records(image: Path) -> int:
    return sum(1 for p in (image / "_engine" / "runs").glob("*/zarr.json"))


KILL_MOMENTS = {
    "before any chunk": lambda image: _records(image) >= 2,  # the written fixture's, this
    "half the chunks": lambda image: marked_chunks(image) >= 8,
    "every chunk written": lambda image: marked_chunks(image) >= 16 + 4 + 1,
}


@pytest.mark.parametrize("moment", list(KILL_MOMENTS))
def test_killed_overwrite_keeps_the_old_output_and_resume_completes_it(
    moment: str,
    written: Path,
    overwritten: dict[str, str],
    tmp_path: Path,
    scheduler: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    image = tmp_path / "image.zarr"
    shutil.copytree(written, image)
    old = file_sums(image / OUTPUT)
    config = slow_config(tmp_path, "user.slow:slower")
    proc = start_run(config, image, "--quiet", "--overwrite", slow_seconds=0.25)
    ready = KILL_MOMENTS[moment]
    wait_for(proc, lambda: ready(image))
    kill_group(proc)
    # until the swap, the old output is there, byte for byte
    assert file_sums(image / OUTPUT) == old
    # a plain re-run points to --resume
    argv = ["run", str(config), "--input", str(image), "--quiet", "--scheduler", scheduler]
    assert main(argv) == 2
    message = capsys.readouterr().err
    assert "--resume" in message and "killed" in message, message
    assert file_sums(image / OUTPUT) == old
    # --resume completes the overwrite: the output is what an uninterrupted run writes
    assert main([*argv, "--resume"]) == 0, capsys.readouterr().err
    assert file_sums(image / OUTPUT, metadata=False) == overwritten
    assert _staging(image) == [], "the old output or the new one's sibling was left behind"
    labels_listing = json.loads((image / "results" / "zarr.json").read_text())
    assert ".slow" not in json.dumps(labels_listing)


def test_a_reader_sees_the_whole_old_or_the_whole_new_output(written: Path, tmp_path: Path) -> None:
    image = tmp_path / "image.zarr"
    shutil.copytree(written, image)
    source = zarr.open_array(str(image / "s0"), mode="r")[...].astype(np.float32)
    old, new = source + 1, source + 2
    config = slow_config(tmp_path, "user.slow:slower")
    proc = start_run(config, image, "--quiet", "--overwrite", slow_seconds=0.1)
    seen = {"old": 0, "new": 0, "mixed": 0}
    try:
        while proc.poll() is None:
            array = zarr.open_array(str(image / OUTPUT / "s0"), mode="r")[...]
            if np.array_equal(array, old):
                seen["old"] += 1
                continue
            if np.array_equal(array, new):
                seen["new"] += 1
                continue
            # a read in flight at the moment of the swap takes some chunks from each
            for box in _chunk_boxes(array.shape):
                whole = np.array_equal(array[box], old[box]) or np.array_equal(array[box], new[box])
                assert whole, f"a reader saw a torn or empty chunk at {box}"
            seen["mixed"] += 1
    finally:
        kill_group(proc)
    assert proc.returncode == 0, proc.stderr.read()
    final = zarr.open_array(str(image / OUTPUT / "s0"), mode="r")[...]
    assert np.array_equal(final, new)
    assert seen["old"] > 0 and seen["mixed"] <= 1, seen


def _chunk_boxes(shape: tuple[int, ...]) -> list[tuple[slice, ...]]:
    import itertools

    ranges = [range(0, s, c) for s, c in zip(shape, CHUNKS, strict=True)]
    return [
        tuple(slice(a, a + c) for a, c in zip(start, CHUNKS, strict=True))
        for start in itertools.product(*ranges)
    ]


def test_resumed_swap_only_cleans_up(tmp_path: Path) -> None:
    """A run killed between its exchange and the removal of the old output: `swap_in`
    again (as --resume does) leaves the new output in place and removes the old."""
    root = tmp_path / "image.zarr"
    zarr.open_group(str(root), mode="w")
    new = zarr.open_group(str(root / "results" / ".slow.new-R"), mode="w")
    new.attrs["ngff_engine"] = {"runs": [{"run_id": "R"}]}
    zarr.open_group(str(root / "results" / "slow"), mode="w").attrs["old"] = True
    assert exchange_directories(root / "results" / ".slow.new-R", root / "results" / "slow")
    moves = {"results/slow": "results/.slow.new-R"}
    swap_in(str(root), moves, "R")
    swap_in(str(root), moves, "R")  # idempotent
    final = zarr.open_group(str(root / "results" / "slow"), mode="r").attrs.asdict()
    assert final == {"ngff_engine": {"runs": [{"run_id": "R"}]}}
    assert not (root / "results" / ".slow.new-R").exists()


def test_killed_update_resumes_to_the_uninterrupted_result(
    written: Path, tmp_path: Path, scheduler: str, capsys: pytest.CaptureFixture[str]
) -> None:
    image = tmp_path / "image.zarr"
    shutil.copytree(written, image)
    reference = tmp_path / "reference.zarr"
    shutil.copytree(written, reference)
    config = slow_config(tmp_path)  # the same config: --update writes an ROI again
    roi = ("--roi", "0:8,0:64,0:64")
    argv = ["run", str(config), "--quiet", "--scheduler", scheduler, *roi]
    assert main([*argv, "--input", str(reference), "--update"]) == 0, capsys.readouterr().err
    proc = start_run(config, image, "--quiet", "--update", *roi, slow_seconds=0.3)
    wait_for(proc, lambda: marked_chunks(image) >= 3)
    kill_group(proc)
    assert main([*argv, "--input", str(image), "--resume"]) == 0, capsys.readouterr().err
    assert file_sums(image / OUTPUT, metadata=False) == file_sums(
        reference / OUTPUT, metadata=False
    )
