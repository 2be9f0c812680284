"""Bad input at the CLI, the ROI: named ROIs in the config and `--roi` text that are
outside the image, empty, malformed or on axes it lacks (the contract: tests/bad_input.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from bad_input import run_args, write_config
from conftest import Cli, expect_user_error

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
    case: str, tmp_path: Path, image3d: Path, scheduler: str, cli: Cli
) -> None:
    rois, name, words = ROI_CASES[case]
    config = write_config(tmp_path, rois=rois)
    argv = run_args(config, image3d, scheduler, "--roi", name)
    expect_user_error(cli, argv, [image3d], *words)


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
def test_bad_cli_roi(case: str, tmp_path: Path, image3d: Path, scheduler: str, cli: Cli) -> None:
    text, words = CLI_ROI_CASES[case]
    config = write_config(tmp_path)
    argv = run_args(config, image3d, scheduler, "--roi", text)
    line = expect_user_error(cli, argv, [image3d], *words)
    assert "validation error" not in line and "pydantic" not in line
