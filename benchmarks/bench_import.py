"""Import benchmark: a uint16 3D TIFF and the same data as plane files, to NGFF 0.5 with 3
levels, by `ngff-engine import` (2 local workers) and by the other Python converters
installed (ngff-zarr, bioio-conversion), in one run. Every result's s0 is checked equal
to the source; wall time and peak memory (resident set, sampled every 0.1 s: of the
converter's whole process tree summed, of its largest process, of its first process
(the driver) and of its largest child process (a worker)) are reported, with the
machine's load (`uptime`) before and after. Not a test: the lead runs it full size on a
quiet machine.

    python benchmarks/bench_import.py --size-mib 2048 --json bench_import.json
    python benchmarks/bench_import.py --size-mib 64          # a quick check

The data is (planes, 1024, 2048) uint16, 4 MiB a plane: 512 planes for 2 GiB. Every tool
gets the same output: chunks 64x256x256, 3 levels halving y and x (z spacing 4 um against
1 um in y and x, so the engine keeps z too), and the same codec: Blosc LZ4, clevel 5,
byte shuffle (the engine's own; ngff-zarr's default would be zstd level 0, which made it
slower: 7.4 s against 5.8 s at 256 MiB). ngff-zarr downsamples with its cheapest method
(dask bin shrink, a block mean); bioio-conversion with its own (a plain x/y half
pyramid), on 2 worker processes. bioio-conversion takes plane files through bioio's own
glob reader (bioio-tiff-glob, its planes indexed by the number in their names; the
converter opens its source with `BioImage(source)`, so the reader is bound there).

The engine starts its own 2-worker cluster each time (NGFF_ENGINE_WARM=0: no warm engine
kept between runs, whose workers would be outside the measured process tree), so its
time includes the cluster's start and stop as the others' include theirs. The files are
read from the page cache (just written), as a second import of the same files would.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import numpy as np
import psutil
import tifffile
import zarr

HEIGHT, WIDTH = 1024, 2048
CHUNKS = (64, 256, 256)


def make_data(folder: Path, planes: int) -> tuple[Path, Path]:
    """One TIFF (contiguous pages) and a folder of plane files with the same voxels."""
    stack = folder / "stack.tif"
    plane_dir = folder / "planes"
    plane_dir.mkdir()
    rng = np.random.default_rng(0)
    base = rng.integers(0, 4000, (HEIGHT, WIDTH), dtype=np.uint16)

    def plane(z: int) -> np.ndarray:
        return base + np.uint16(z)

    with tifffile.TiffWriter(stack, bigtiff=planes * HEIGHT * WIDTH * 2 > 2**31) as tif:
        tif.write(
            (plane(z) for z in range(planes)),
            shape=(planes, HEIGHT, WIDTH),
            dtype=np.uint16,
            metadata={"axes": "ZYX"},
        )
    for z in range(planes):
        tifffile.imwrite(plane_dir / f"plane_z{z:04d}.tif", plane(z))
    return stack, plane_dir


def expected_plane(z: int) -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, 4000, (HEIGHT, WIDTH), dtype=np.uint16) + np.uint16(z)


ENGINE = """
import sys
from engine.cli.entry import main
sys.argv = ["ngff-engine", "import", {source!r}, {out!r}, "--ngff", "0.5", "--levels", "3",
            "--workers", "2", "--chunks", "64,256,256", "--scale", "z=4,y=1,x=1",
            "--unit", "micrometer", "--quiet"{extra}]
main()
"""

NGFF_ZARR = """
import glob
import ngff_zarr as nz
from ngff_zarr import ConversionBackend, cli_input_to_ngff_image
source = {source!r}
files = sorted(glob.glob(source + "/*.tif")) if not source.endswith(".tif") else [source]
image = cli_input_to_ngff_image(ConversionBackend.TIFFFILE, files)
if image.data.ndim == 4:  # a plane series stacks to (n, 1, y, x) or similar: drop singletons
    image.data = image.data.reshape(image.data.shape[0], *image.data.shape[-2:])
image = nz.to_ngff_image(
    image.data, dims=("z", "y", "x"), scale={{"z": 4.0, "y": 1.0, "x": 1.0}},
    translation={{"z": 0.0, "y": 0.0, "x": 0.0}},
)
multiscales = nz.to_multiscales(
    image, scale_factors=[{{"z": 1, "y": 2, "x": 2}}, {{"z": 1, "y": 4, "x": 4}}],
    chunks={{"z": 64, "y": 256, "x": 256}}, method=nz.Methods.DASK_BIN_SHRINK,
)
import zarr
nz.to_ngff_zarr(
    {out!r}, multiscales, version="0.5",
    compressors=[zarr.codecs.BloscCodec(cname="lz4", clevel=5, shuffle="shuffle")],
)
"""

BIOIO = """
source = {source!r}
chunks = (64, 256, 256)
import zarr
from bioio_conversion.converters import OmeZarrConverter
if not source.endswith(".tif"):  # plane files: bioio's glob reader, 5D (t, c, z, y, x)
    import functools, re
    from pathlib import Path
    import pandas as pd
    import bioio_tiff_glob
    from bioio import BioImage
    import bioio_conversion.converters.ome_zarr_converter as converter

    def by_z(path):  # the plane index is the number in the file name
        return pd.Series({{"Z": int(re.findall(r"\\d+", Path(path).name)[-1])}})

    # the converter (and its forked worker processes) open the source with BioImage(path)
    converter.BioImage = functools.partial(BioImage, reader=bioio_tiff_glob.Reader, indexer=by_z)
    source, chunks = source + "/*.tif", (1, 1, *chunks)
OmeZarrConverter(
    source=source, destination={folder!r}, name={name!r}, num_levels=3,
    chunk_shape=chunks, zarr_format=3,
    compressor=zarr.codecs.BloscCodec(cname="lz4", clevel=5, shuffle="shuffle"), n_workers=2,
).convert()
"""


def run_measured(code: str, env: dict[str, str] | None = None) -> dict:
    """Run a converter in a fresh interpreter; wall time and peak RSS of its process tree
    (summed, its largest process, the driver, the largest worker)."""
    started = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **(env or {})},
    )
    root = psutil.Process(proc.pid)
    peak_sum = peak_one = peak_driver = peak_worker = 0
    while proc.poll() is None:
        try:
            children = root.children(recursive=True)
            driver = root.memory_info().rss
            rss = []
            for p in children:
                try:
                    rss.append(p.memory_info().rss)
                except psutil.Error:
                    pass
            peak_driver = max(peak_driver, driver)
            peak_worker = max(peak_worker, max(rss, default=0))
            peak_sum = max(peak_sum, driver + sum(rss))
            peak_one = max(peak_one, driver, max(rss, default=0))
        except psutil.Error:
            pass
        time.sleep(0.1)
    seconds = time.perf_counter() - started
    error = proc.stderr.read() if proc.returncode else ""
    return {
        "seconds": round(seconds, 2),
        "peak_rss_sum_mib": round(peak_sum / 2**20),
        "peak_rss_largest_mib": round(peak_one / 2**20),
        "peak_rss_driver_mib": round(peak_driver / 2**20),
        "peak_rss_worker_mib": round(peak_worker / 2**20),
        "ok": proc.returncode == 0,
        "error": error.strip().splitlines()[-1] if error.strip() else "",
    }


def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def find_s0(out: Path) -> zarr.Array | None:
    """The finest level of what a converter wrote (it may nest the image one level down)."""
    for meta in sorted(out.rglob("zarr.json"), key=lambda p: len(p.parts)):
        group = meta.parent
        attrs = json.loads(meta.read_text()).get("attributes", {})
        ome = attrs.get("ome", attrs)
        if "multiscales" in ome:
            path = ome["multiscales"][0]["datasets"][0]["path"]
            return zarr.open_array(str(group / path), mode="r")
    return None


def equal_to_source(out: Path, planes: int) -> bool:
    s0 = find_s0(out)
    if s0 is None:
        return False
    shape = tuple(s for s in s0.shape if s != 1)
    if shape != (planes, HEIGHT, WIDTH):
        return False
    lead = (0,) * (s0.ndim - 3)
    for z0 in range(0, planes, 64):
        slab = np.asarray(s0[(*lead, slice(z0, min(z0 + 64, planes)))])
        for i, plane in enumerate(slab):
            if not np.array_equal(plane, expected_plane(z0 + i)):
                return False
    return True


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=2048, help="data size (default 2 GiB)")
    parser.add_argument("--json", default="bench_import.json", help="results file")
    parser.add_argument("--tmp", default=None, help="working folder (default: a temp dir)")
    parser.add_argument(
        "--tools",
        default="engine,engine-no-checksum,ngff-zarr,bioio-conversion",
        help="comma-separated",
    )
    args = parser.parse_args()
    planes = max(1, args.size_mib * 2**20 // (HEIGHT * WIDTH * 2))
    folder = Path(tempfile.mkdtemp(prefix="bench_import_", dir=args.tmp))
    rows = []
    load_before = uptime()
    print(load_before, flush=True)
    try:
        t = time.perf_counter()
        stack, plane_dir = make_data(folder, planes)
        print(
            f"data: {planes} planes of {HEIGHT}x{WIDTH} uint16 "
            f"({planes * HEIGHT * WIDTH * 2 / 2**20:.0f} MiB), made in "
            f"{time.perf_counter() - t:.1f} s",
            flush=True,
        )
        tools = {
            "engine": ENGINE,
            "engine-no-checksum": ENGINE,
            "ngff-zarr": NGFF_ZARR,
            "bioio-conversion": BIOIO,
        }
        for source_name, source in (("3D TIFF", stack), ("plane files", plane_dir)):
            for tool in args.tools.split(","):
                name = f"{tool}-{source_name.split()[0].lower()}"
                out = folder / f"{name}.zarr"
                extra = ', "--no-checksum"' if tool == "engine-no-checksum" else ""
                code = tools[tool].format(
                    source=str(source), out=str(out), folder=str(folder), name=name, extra=extra
                )
                warm = {"NGFF_ENGINE_WARM": "0"} if tool.startswith("engine") else None
                result = run_measured(code, warm)
                if tool == "bioio-conversion" and not out.exists():
                    found = sorted(folder.glob(f"{name}*.zarr"))
                    out = found[0] if found else out
                result["equal"] = result["ok"] and equal_to_source(out, planes)
                rows.append({"tool": tool, "source": source_name, **result})
                print(json.dumps(rows[-1]), flush=True)
                shutil.rmtree(out, ignore_errors=True)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    load_after = uptime()
    print(load_after)
    print()
    print(
        f"{'source':<12} {'tool':<20} {'seconds':>8} {'peak RSS sum':>13} "
        f"{'largest proc':>13} {'driver':>9} {'worker':>9} {'equal':>6}"
    )
    for r in rows:
        print(
            f"{r['source']:<12} {r['tool']:<20} {r['seconds']:>8.1f} "
            f"{r['peak_rss_sum_mib']:>9} MiB {r['peak_rss_largest_mib']:>9} MiB "
            f"{r['peak_rss_driver_mib']:>5} MiB {r['peak_rss_worker_mib']:>5} MiB "
            f"{'yes' if r['equal'] else 'NO':>6}  {r['error'][:60]}"
        )
    Path(args.json).write_text(
        json.dumps(
            {
                "size_mib": args.size_mib,
                "planes": planes,
                "codec": "blosc lz4 clevel 5 byte shuffle (all tools)",
                "load_before": load_before,
                "load_after": load_after,
                "rows": rows,
            },
            indent=1,
        )
    )
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONWARNINGS", "ignore")
    sys.exit(main())
