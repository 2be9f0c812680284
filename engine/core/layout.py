"""Where the engine keeps its own things inside an image's zarr: the `_engine/` group.

One owner for these paths: the compiler puts a run's scratch arrays under its run
folder, the workers' done markers go next to them (engine/state/markers.py), output
locks and run records (engine/state/locks.py, records.py), trained models and previews.

    _engine/runs/<run_id>/          run record (attributes), scratch arrays, markers/
    _engine/runs/<run_id>/markers/  done markers per stage
    _engine/locks/<output path>     one lock file per output being written
    _engine/models/<name>/          trained models
    _engine/previews/<name>_<roi>.png
    _engine/diff/                   scratch of `diff`
"""

from __future__ import annotations

ENGINE_GROUP = "_engine"
RUNS = f"{ENGINE_GROUP}/runs"
LOCKS = f"{ENGINE_GROUP}/locks"
MODELS = f"{ENGINE_GROUP}/models"
PREVIEWS = f"{ENGINE_GROUP}/previews"
DIFF_SCRATCH = f"{ENGINE_GROUP}/diff"


def run_folder(run_id: str) -> str:
    """A run's record group, holding its scratch arrays and markers."""
    return f"{RUNS}/{run_id}"


def marker_folder(scratch: str, stage: str) -> str:
    """The done markers of one stage of a run (a `/` in a stage name becomes `.`)."""
    return f"{scratch}/markers/{stage.replace('/', '.')}"


def preview_file(output: str, roi_key: str) -> str:
    return f"{PREVIEWS}/{output}_{roi_key}.png"
