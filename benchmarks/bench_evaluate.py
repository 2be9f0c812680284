"""Benchmark: scores of the standard pipeline's labels against the sample's truth, through
the engine and on the whole arrays with numpy.

Not a test (pytest does not collect it). Prints JSON:

    python benchmarks/bench_evaluate.py SAMPLE.zarr [--workers 2]

On a sample written by `ngff-engine sample` (the standard pipeline runs first if
`labels/nuclei` is missing): the engine's run of configs/nuclei.yaml plus an evaluate
step (the labels are reused, so only the evaluate stage computes), a re-run of the
unchanged pipeline (zero chunk tasks), `diff` of the labels against the truth, and
tasks/evaluate on the whole arrays in one process (read and score timed apart, peak
memory), with a check that all three give the same scores.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def numpy_child(path: str) -> None:
    """Both label images in memory, scored in one process; prints JSON."""
    import zarr

    from tasks.evaluate import pair_counts, scores

    t0 = time.perf_counter()
    pred = zarr.open_array(f"{path}/labels/nuclei/s0")[...]
    ref = zarr.open_array(f"{path}/labels/truth/s0")[...]
    t1 = time.perf_counter()
    found = scores(pair_counts(pred, ref))
    t2 = time.perf_counter()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    result = {"read_seconds": t1 - t0, "score_seconds": t2 - t1, "peak_bytes": peak}
    print(json.dumps({**result, "scores": found.to_json()}))


def drop_table(image: str, name: str) -> None:
    import shutil

    import zarr

    if (Path(image) / "tables" / name).exists():
        shutil.rmtree(Path(image) / "tables" / name)
        tables = zarr.open_group(f"{image}/tables", mode="r+")
        tables.attrs["tables"] = [t for t in tables.attrs["tables"] if t != name]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("sample")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        numpy_child(args.sample)
        return

    from engine import Pipeline, run
    from engine.runs.evaluation import diff

    standard = Pipeline.from_yaml(REPO / "configs" / "nuclei.yaml")
    args.sample = str(Path(args.sample).resolve())
    report: dict = {"sample": args.sample, "workers": args.workers}
    if not (Path(args.sample) / "labels" / "nuclei").exists():
        started = time.perf_counter()
        run(standard, input=args.sample, workers=args.workers)
        report["pipeline_seconds"] = time.perf_counter() - started
    drop_table(args.sample, "bench_eval")  # from an earlier benchmark: it would be reused
    evaluated = standard.add(
        "eval", "evaluate", "nuclei", {"kind": "table", "name": "bench_eval"}, reference="truth"
    )
    first = run(evaluated, input=args.sample, workers=args.workers)
    stage = next(s for s in first.stages if s.kind == "evaluate")
    report["engine"] = {
        "run_seconds": first.seconds,
        "evaluate_stage_seconds": stage.seconds,
        "tasks_done": first.tasks_done,
        "reused": first.reused,
    }
    again = run(evaluated, input=args.sample, workers=args.workers)
    report["unchanged_rerun"] = {"seconds": again.seconds, "tasks_done": again.tasks_done}
    started = time.perf_counter()
    by_diff = diff(args.sample, "nuclei", "truth", workers=args.workers)
    report["diff_seconds"] = time.perf_counter() - started
    child = subprocess.run(
        [sys.executable, __file__, args.sample, "--child"],
        capture_output=True,
        text=True,
        check=True,
        cwd=REPO,
    )
    report["numpy"] = json.loads(child.stdout)
    scores = first.evaluations["bench_eval"].to_json()
    report["scores"] = scores
    report["same_scores"] = scores == by_diff.to_json() == report["numpy"].pop("scores")
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    main()
