"""Benchmark: the standard pipeline on an image read from a local S3 server, against the
same run on local disk and zarr's own whole-array read of the same S3 array.

Not a test. Starts moto's standalone S3 server on 127.0.0.1 (tests/servers.py), writes
the synthetic sample, uploads it, then times, each `--repeat` times (medians):

  local        configs/nuclei-measure.yaml on a local copy, outputs in-image
  s3           the same on the S3 image, outputs in-image on S3 (reads and writes S3)
  s3->local    the same reading the S3 image, outputs to a local output store
               (both with S3 chunk I/O through obstore, then again through s3fs:
               NGFF_ENGINE_S3_CLIENT=fsspec, suffix `_fsspec`)
  zarr read    zarr.open_array(store)[...] of the S3 image's s0 (one process), with
               either client
  halo reads   one task's input box (27 chunks) through the chunk cache, fetched one
               by one and with the cache's concurrent fetches (engine/io/chunk_cache.py)

and checks the labels of every run equal the local run's. Also the time of one small GET
on the server, and per run the seconds of each stage.

    python benchmarks/bench_remote.py [--shape 128,512,512] [--chunks 32,128,128]
                                      [--workers 2] [--repeat 1] [--out bench.json]
    python benchmarks/bench_remote.py --validate      # small and quick: 32,128,128
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO))

CONFIG = REPO / "configs" / "nuclei-measure.yaml"


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(v) for v in text.split(","))


def timed_run(input, output=None, options=None, workers=2):
    from engine import Pipeline, run

    started = time.perf_counter()
    result = run(
        Pipeline.from_yaml(CONFIG),
        input=input,
        output=output,
        storage_options=options,
        workers=workers,
        overwrite=True,
    )
    return time.perf_counter() - started, result


def labels_of(where: str, options=None) -> np.ndarray:
    import zarr

    from engine.io.location import Location

    loc = Location.parse(where, options).child("labels/nuclei/s0")
    return np.asarray(zarr.open_array(loc.zarr_url(), mode="r")[...])


def halo_reads(url: str, options: dict, chunks: tuple[int, ...]) -> dict[str, float]:
    """One task's read box (a chunk grown by a halo: 27 chunks) through the chunk cache:
    the chunks fetched one by one, then with the cache's concurrent fetches."""
    import zarr

    from engine.io import chunk_cache
    from engine.io.location import Location

    array = zarr.open_array(Location.parse(url, options).child("s0").zarr_url(), mode="r")
    box = tuple(slice(c - 4, 2 * c + 4) for c in chunks)
    out = {}
    for name, fetches in (("one_by_one", 1), ("concurrent", chunk_cache.REMOTE_FETCHES)):
        times = []
        for attempt in range(3):
            cache = chunk_cache.ChunkCache()
            if fetches == 1:
                cache.prefetch = lambda loads, workers=1, c=cache: None  # type: ignore
            started = time.perf_counter()
            chunk_cache.read_cached(array, box, ("bench", name, attempt), cache=cache)
            times.append(time.perf_counter() - started)
        out[name] = min(times)
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--shape", type=_ints, default=(128, 512, 512))
    parser.add_argument("--chunks", type=_ints, default=(32, 128, 128))
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--validate", action="store_true", help="small and quick")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    if args.validate:
        args.shape, args.chunks = (32, 128, 128), (16, 64, 64)

    from servers import s3_server

    from engine.io.sample_zarr import write_sample

    report: dict = {"shape": args.shape, "chunks": args.chunks, "workers": args.workers}
    with tempfile.TemporaryDirectory() as tmp, s3_server() as s3:
        tmp = Path(tmp)
        sample = Path(write_sample(tmp / "sample.zarr", args.shape, args.chunks))
        local = tmp / "local.zarr"
        shutil.copytree(sample, local)
        url = s3.upload(sample, "bench", "sample.zarr")
        report["bytes_s0"] = int(np.prod(args.shape)) * 2
        fs = s3.filesystem()

        names = ("local", "s3", "s3_to_local_store", "s3_fsspec", "s3_to_local_store_fsspec")
        times: dict[str, list[float]] = {name: [] for name in names}
        results = {}
        equal: dict[str, bool] = {}
        for _ in range(args.repeat):
            seconds, results["local"] = timed_run(local, workers=args.workers)
            times["local"].append(seconds)
            ref = labels_of(str(local))
            for client in ("obstore", "fsspec"):
                # the S3 client of chunk I/O (engine/io/remote_clients.py); the workers
                # of each run's own local cluster inherit the choice
                os.environ["NGFF_ENGINE_S3_CLIENT"] = client
                tag = "" if client == "obstore" else "_fsspec"
                seconds, results[f"s3{tag}"] = timed_run(
                    url, options=s3.options, workers=args.workers
                )
                times[f"s3{tag}"].append(seconds)
                equal[f"s3{tag}"] = bool(np.array_equal(labels_of(url, s3.options), ref))
                store = tmp / f"outputs{tag}.zarr"
                seconds, results[f"s3_to_local_store{tag}"] = timed_run(
                    url, output=store, options=s3.options, workers=args.workers
                )
                times[f"s3_to_local_store{tag}"].append(seconds)
                equal[f"s3_to_local_store{tag}"] = bool(np.array_equal(labels_of(store), ref))
            os.environ.pop("NGFF_ENGINE_S3_CLIENT")
        report["seconds"] = {k: statistics.median(v) for k, v in times.items()}
        report["stages"] = {
            k: {s.name: round(s.seconds, 2) for s in r.stages} for k, r in results.items()
        }

        import zarr

        from engine.io.location import Location

        for client in ("obstore", "fsspec"):
            os.environ["NGFF_ENGINE_S3_CLIENT"] = client
            whole = []
            for _ in range(3):
                started = time.perf_counter()
                loc = Location.parse(url, s3.options).child("s0")
                zarr.open_array(loc.zarr_url(), mode="r")[...]
                whole.append(time.perf_counter() - started)
            report["seconds"][f"zarr_whole_array_read_s3_{client}"] = min(whole)
        os.environ.pop("NGFF_ENGINE_S3_CLIENT")
        started = time.perf_counter()
        zarr.open_array(str(local / "s0"), mode="r")[...]
        report["seconds"]["zarr_whole_array_read_local"] = time.perf_counter() - started

        report["labels_equal"] = equal
        report["halo_read_seconds"] = halo_reads(url, s3.options, args.chunks)
        started = time.perf_counter()
        for _ in range(20):
            fs.cat_file("bench/sample.zarr/zarr.json")
        report["seconds_per_small_get"] = (time.perf_counter() - started) / 20
        report["objects_written_s3"] = len(fs.find("bench/sample.zarr/labels/nuclei"))
    print(json.dumps(report, indent=2))
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=2))
    assert all(report["labels_equal"].values()), "a remote run's labels differ from local"


if __name__ == "__main__":
    main()
