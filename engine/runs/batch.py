"""Inside a batch allocation: `python -m engine.runs.batch RUN_DIR`, once per srun task.

dask-jobqueue's SLURMRunner gives each task its role: task 0 the dask scheduler,
task 1 the driver (this module's `drive`: the same `run()` as `ngff-engine run`, on
one image or on a plate, a well, a list of images or an ROI table),
tasks 2.. the workers (engine/execute/batch_runner.py); TLS comes from the run's
certificate in RUN_DIR.

The driver writes into RUN_DIR: progress.json while it runs, then result.json (or
error.txt) and exit_code (0 done, 2 a problem with the input, 1 anything else).
"""

from __future__ import annotations

import json
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from engine.execute.batch_runner import serve
from engine.runs.progress import StageCounts


def write_json(path: Path, data: Any) -> None:
    """Atomically: readers never see half a file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=1))
    os.replace(tmp, path)


def progress_file(path: Path) -> StageCounts:
    """The run's progress, mirrored to `path` (progress.json) for `status()`: when a
    stage starts or completes, else at most every 0.5 s."""
    last = [0.0]

    def save(stage: str, final: bool) -> None:
        moment = time.monotonic()
        if final or moment - last[0] > 0.5:
            last[0] = moment
            write_json(path, {"stages": counts.stages, "time": time.time()})

    counts = StageCounts(on_change=save)
    write_json(path, {"stages": counts.stages, "time": time.time()})
    return counts


def drive(run_dir: Path, spec: dict[str, Any], scheduler: str) -> int:
    from engine.core.errors import EngineError
    from engine.core.pipeline import Pipeline
    from engine.runs.units import UnitsFailed, run

    try:
        pipeline = Pipeline.build(spec["pipeline"], source=spec.get("config", "pipeline"))
        result = run(
            pipeline,
            input=spec["input"],
            roi=spec["roi"],
            overwrite=spec["overwrite"],
            update=spec["update"],
            resume=spec.get("resume", False),
            scheduler=scheduler,
            progress=progress_file(run_dir / "progress.json"),
            **spec.get("units", {}),  # a plate, a well, a list, an ROI table
        )
    except UnitsFailed as exc:  # the other units' results, and the failed units named
        write_json(run_dir / "result.json", exc.result.to_json())
        (run_dir / "error.txt").write_text(f"{exc}\n")
        return 2
    except EngineError as exc:
        (run_dir / "error.txt").write_text(f"{exc}\n")
        return 2
    except Exception as exc:
        (run_dir / "error.txt").write_text(
            f"internal error: {type(exc).__name__}: {exc}\n\n{traceback.format_exc()}"
        )
        return 1
    write_json(run_dir / "result.json", result.to_json())
    return 0


def main(argv: list[str]) -> int:
    run_dir = Path(argv[0]).absolute()
    spec = json.loads((run_dir / "run.json").read_text())
    return serve(run_dir, spec, lambda scheduler: drive(run_dir, spec, scheduler))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
