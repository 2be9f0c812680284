"""Bad input and hostile conditions get one line naming the path, chunk key or axis at
fault, exit 2, and leave the image as it was: broken array metadata, a short `scale`, a
read-only image, a corrupt chunk, a full disk, a CLI ROI short of axes or negative, a
step whose filter cannot fit in memory, an unused ROI in an unknown unit, a damaged lock
file."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import yaml

from engine import Pipeline, run
from engine.cli.commands import main
from engine.io.sample_zarr import write_sample
from engine.state.locks import OutputLocks
from engine.state.records import list_runs

SHAPE, CHUNKS = (16, 64, 64), (8, 32, 32)
STEPS = [
    {"name": "smooth", "op": "gaussian", "input": "image", "params": {"sigma": 1.0}},
    {"name": "mask", "op": "threshold", "input": "smooth", "params": {"method": "otsu"}},
    {"name": "nuclei", "op": "label", "input": "mask", "output": {"kind": "label", "name": "n"}},
]


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return Path(write_sample(tmp_path_factory.mktemp("errors") / "image.zarr", SHAPE, CHUNKS))


@pytest.fixture
def image(sample: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "image.zarr"
    shutil.copytree(sample, copy)
    return copy


def config(folder: Path, steps: list | None = None, rois: dict | None = None) -> Path:
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump({"steps": steps or STEPS, "rois": rois or {}}))
    return path


def sums(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and "_engine" not in p.parts
    }


def refused(capsys: pytest.CaptureFixture[str], argv: list[str], image: Path, *words: str) -> str:
    """The CLI refuses with exit 2 and one line holding `words`; the image is unchanged
    (its `_engine/` run records aside)."""
    before = sums(image)
    try:
        code = main(argv)
    except SystemExit as exc:
        code = exc.code
    output = capsys.readouterr()
    text = (output.out + output.err).strip()
    assert code == 2, text
    assert len(text.splitlines()) == 1, text
    assert "Traceback" not in text and "internal error" not in text, text
    for word in words:
        assert word in text, f"{word!r} not in {text!r}"
    assert sums(image) == before
    return text


def run_argv(conf: Path, image: Path, scheduler: str, *extra: str) -> list[str]:
    return ["run", str(conf), "--input", str(image), "--scheduler", scheduler, "--quiet", *extra]


def test_broken_array_metadata(
    image: Path, tmp_path: Path, scheduler: str, capsys: pytest.CaptureFixture[str]
) -> None:
    (image / "s0" / "zarr.json").write_text('{"shape": [16,')
    refused(capsys, run_argv(config(tmp_path), image, scheduler), image, "s0/zarr.json")


def test_scale_shorter_than_the_axes(
    image: Path, tmp_path: Path, scheduler: str, capsys: pytest.CaptureFixture[str]
) -> None:
    meta = json.loads((image / "zarr.json").read_text())
    transforms = meta["attributes"]["ome"]["multiscales"][0]["datasets"][0]
    transforms["coordinateTransformations"][0]["scale"] = [1.0, 0.5]
    (image / "zarr.json").write_text(json.dumps(meta))
    argv = run_argv(config(tmp_path), image, scheduler)
    refused(capsys, argv, image, "dataset 's0'", "'scale' has 2 values for 3 axes")


@pytest.mark.parametrize("damage", ["truncated", "random bytes", "empty file"])
def test_corrupt_input_chunk_is_named(
    damage: str, image: Path, tmp_path: Path, scheduler: str, capsys: pytest.CaptureFixture[str]
) -> None:
    chunk = image / "s0" / "c" / "1" / "1" / "0"  # box [8:16, 32:64, 0:32]
    data = chunk.read_bytes()
    chunk.write_bytes(
        {
            "truncated": data[: len(data) // 3],
            "random bytes": bytes(range(256)) * 8,
            "empty file": b"",
        }[damage]
    )
    argv = run_argv(config(tmp_path), image, scheduler)
    refused(capsys, argv, image, "corrupt chunk", "s0/c/1/1/0", "[8:16, 32:64, 0:32]")


@pytest.mark.parametrize(
    "roi, words",
    [
        ("0:8,0:32", ["--roi '0:8,0:32'", "z, y, x"]),
        ("-5:10,0:32,0:32", ["--roi '-5:10,0:32,0:32'", "negative"]),
    ],
)
def test_cli_roi_short_of_axes_or_negative(
    roi: str,
    words: list[str],
    image: Path,
    tmp_path: Path,
    scheduler: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    refused(capsys, run_argv(config(tmp_path), image, scheduler, "--roi", roi), image, *words)


def test_filter_that_cannot_fit_is_refused_before_anything_runs(
    image: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    steps = [
        {
            "name": "smooth",
            "op": "gaussian",
            "input": "image",
            "params": {"sigma": 1.0e9},
            "output": {"kind": "image", "name": "big"},
        }
    ]
    argv = ["run", str(config(tmp_path, steps)), "--input", str(image), "--workers", "1"]
    refused(capsys, [*argv, "--quiet"], image, "step 'smooth'", "GiB", "memory limit")
    assert not (image / "results" / "big").exists()


def test_an_unused_roi_in_an_unknown_unit_is_refused_when_all_is_reused(
    image: Path, tmp_path: Path, scheduler: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(run_argv(config(tmp_path), image, scheduler)) == 0
    capsys.readouterr()
    rois = {"far": {"units": "parsec", "x": [0.0, 1.0]}}
    argv = run_argv(config(tmp_path, rois=rois), image, scheduler)
    refused(capsys, argv, image, "roi 'far'", "units 'parsec'")


def test_lock_file_that_is_not_json(image: Path, tmp_path: Path, scheduler: str) -> None:
    lock = OutputLocks(image, ["labels/n"], "x").path("labels/n")
    lock.parent.mkdir(parents=True)
    lock.write_text('{"run_id": "2026')
    # no run recorded as running could hold it: taken over, and said so
    locks = OutputLocks(image, ["labels/n"], "mine").acquire()
    assert locks.taken_over == [{"broken_lock": str(lock)}]
    locks.release()
    # a run does the same and completes
    run(Pipeline.build({"steps": STEPS}), input=image, scheduler=scheduler)
    assert list_runs(image)[-1]["state"] == "completed"


@contextmanager
def mounted(folder: Path, size: str) -> Iterator[Path]:
    """A tmpfs of `size` at `folder` (the tests run as root, as the SLURM dev cluster)."""
    folder.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)], check=True)
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=True)


def test_read_only_image(
    sample: Path, tmp_path: Path, scheduler: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with mounted(tmp_path / "ro", "4m") as folder:
        image = folder / "image.zarr"
        shutil.copytree(sample, image)
        subprocess.run(["mount", "-o", "remount,ro", str(folder)], check=True)
        argv = run_argv(config(tmp_path), image, scheduler)
        refused(capsys, argv, image, str(image), "read-only", "not writable", "copy the image")


@pytest.mark.parametrize("left_kib", [8, 40])
def test_disk_full(
    left_kib: int,
    sample: Path,
    tmp_path: Path,
    scheduler: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """With 8 KiB left the run record cannot be written; with 40 KiB a chunk cannot."""
    with mounted(tmp_path / "full", "1200k") as folder:
        image = folder / "image.zarr"
        shutil.copytree(sample, image)
        free = shutil.disk_usage(folder).free
        (folder / "filler").write_bytes(b"\0" * (free - left_kib * 1024))
        argv = run_argv(config(tmp_path), image, scheduler)
        code = main(argv)
        text = capsys.readouterr().err.strip()
        assert code == 2, text
        assert len(text.splitlines()) == 1 and "Traceback" not in text, text
        assert "no space left on device" in text and str(image) in text, text
