"""What a new user reads in the first hour: counts that add up after `--update`, the ROI
that `status` and `diff` ran or scored, and the small things (info's axes, validate of a
training config, plan's refusals and widths, --roi help, feedback while a forest fits)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import zarr

from engine import Pipeline
from engine.cli.commands import main
from engine.cli.parser import build_parser
from engine.io.sample_zarr import write_sample
from engine.runs.runner import run

ROOT = Path(__file__).parents[1]
CONFIG = str(ROOT / "configs/nuclei.yaml")


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return Path(write_sample(tmp_path_factory.mktemp("first") / "s.zarr", (32, 128, 128), seed=3))


def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    capsys.readouterr()
    code = main(list(argv))
    captured = capsys.readouterr()
    assert code == 0, captured.err
    return captured.out


def ids_in(sample: Path) -> int:
    data = zarr.open_group(str(sample), mode="r")["labels/nuclei/s0"][...]
    return len(np.unique(data)) - 1


def test_counts_after_update_add_up_and_status_diff_name_the_roi(
    sample: Path, scheduler: str, capsys: pytest.CaptureFixture[str]
) -> None:
    base = ["run", CONFIG, "--input", str(sample), "--scheduler", scheduler, "--quiet"]
    text = cli(capsys, *base, "--roi", "test")
    first = int(re.search(r"labels/nuclei \((\d+) objects\)", text).group(1))
    assert first == ids_in(sample)

    text = cli(capsys, *base, "--roi", "train", "--update")
    found = re.search(r"\((\d+) objects in this ROI, (\d+) in the output\)", text)
    assert found, text
    assert int(found.group(2)) == ids_in(sample) == first + int(found.group(1))

    # the whole image covers both earlier ROIs: only this run's ids are left
    text = cli(capsys, *base, "--update")
    found = re.search(r"\((\d+) objects in this ROI, (\d+) in the output\)", text)
    assert found and found.group(1) == found.group(2) == str(ids_in(sample)), text

    status = cli(capsys, "status", str(sample))
    rois = re.findall(r"^  ROI \[(.*)\] \(level 0\)$", status, re.M)
    assert rois == ["0:32, 64:128, 64:128", "0:32, 0:64, 0:64", "0:32, 0:128, 0:128"], status

    text = cli(
        capsys, "diff", str(sample), "nuclei", "truth", "--roi", "test", "--scheduler", scheduler
    )
    assert "scored on ROI test [0:32, 64:128, 64:128] (level 0)" in text
    text = cli(capsys, "diff", str(sample), "nuclei", "truth", "--scheduler", scheduler)
    assert "scored on ROI whole image [0:32, 0:128, 0:128] (level 0)" in text


def test_plan_says_what_run_would_refuse_in_full_width(
    sample: Path, scheduler: str, capsys: pytest.CaptureFixture[str]
) -> None:
    base = ["run", CONFIG, "--input", str(sample), "--scheduler", scheduler, "--quiet"]
    cli(capsys, *base, "--roi", "0:32,0:32,0:32", "--overwrite")
    text = cli(capsys, "plan", CONFIG, "--input", str(sample), "--roi", "train")
    assert "run would refuse: output labels/nuclei exists (same config); use --update" in text
    assert "(outputs exist: add --update or --overwrite)" in text
    # not a terminal here: still no column cut or wrapped
    assert "nuclei/pyramid-1" in text and "chunks written" in text and "…" not in text
    assert "run would refuse" not in cli(
        capsys, "plan", CONFIG, "--input", str(sample), "--roi", "0:32,0:32,0:32"
    )


def test_info_validate_and_help_read_well(sample: Path, capsys: pytest.CaptureFixture[str]) -> None:
    text = cli(capsys, "info", str(sample))
    assert "axes z (space, micrometer), y (space, micrometer), x (space, micrometer)" in text
    assert "{'name'" not in text
    text = cli(capsys, "validate", str(ROOT / "configs/nuclei-train.yaml"), "--input", str(sample))
    assert "outputs model _engine/models/nuclei_rf" in text and "outputs \n" not in text
    helps = build_parser()._subparsers._group_actions[0].choices
    for command in ("run", "plan", "submit"):
        text = helps[command].format_help()
        assert "ROI tables" in re.sub(r"\s+", " ", text), command
    comment = (ROOT / "configs/nuclei-measure.yaml").read_text().split("input:")[0]
    assert "smoothed" not in comment and "raw image" in comment


def test_the_forest_fit_has_a_progress_bar(sample: Path, scheduler: str) -> None:
    seen: dict[str, list[int]] = {}

    def progress(stage: str, total: int):
        seen[stage] = [total, 0]

        def advance(n: int) -> None:
            seen[stage][1] += n

        return advance

    train = Pipeline.from_yaml(ROOT / "configs/nuclei-train.yaml")
    run(train, sample, roi="train", scheduler=scheduler, progress=progress)
    assert seen["train/fit"] == [1, 1], seen
