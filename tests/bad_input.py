"""The configs the bad-input tests (test_bad_input_*.py) break, one mistake at a time.

Each mistake goes through `engine.cli.commands.main([...])` (some also through a real
`ngff-engine` process) and must give exit code 2 (the user's to fix), one line that names
the culprit (step, field, ROI, path), no "Traceback", and every file under the input
image (and any output already in it) byte-identical afterwards (conftest.expect_user_error).
Runs that get past validation use the shared dask cluster (`--scheduler`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml


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


def run_args(config: Path, image: Path, scheduler: str, *extra: str) -> list[str]:
    return ["run", str(config), "--input", str(image), "--scheduler", scheduler, *extra]


def edit(index: int, **changes: Any) -> list[dict[str, Any]]:
    """The base steps with step `index` changed (a value None removes that key)."""
    steps = base_steps()
    for key, value in changes.items():
        if value is None:
            steps[index].pop(key, None)
        else:
            steps[index][key] = value
    return steps


def with_eval(reference: str) -> list[dict[str, Any]]:
    """The base steps and an evaluate step against label image `reference`."""
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


def exploding_steps() -> list[dict[str, Any]]:
    """The base steps after a user function that raises on every block."""
    steps = base_steps()
    steps[0] = {
        "name": "custom",
        "op": "function",
        "input": "image",
        "params": {"function": "user.functions:explode", "dtype": "float32"},
    }
    steps[1]["input"] = "custom"
    return steps
