"""`ngff-engine import` and `ngff-engine export`: getting data in and out.

`add_parsers(sub)` adds both subcommands to the command's parser; COMMANDS maps them to
their functions. Parse, call the API (engine/runs/importing.py, engine/io/export.py),
print: no logic of their own.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from typing import Any

from engine.cli.arguments import ints
from engine.cli.render import LazyConsole, progress_bars, progress_callback
from engine.core.errors import ConfigError

console = LazyConsole(stderr=True)
out = LazyConsole()


def add_parsers(
    sub: Any,
    cluster_flags: Callable[[argparse.ArgumentParser], None],
    cluster_overrides: Callable[[argparse.Namespace], dict[str, Any]],
) -> None:
    """Add `import` and `export`; `import` takes the SLURM flags of `run` (the parser's own
    helpers, passed in: this module does not import the parser, which imports it)."""
    p = sub.add_parser(
        "import",
        help="import a TIFF/OME-TIFF, a series of TIFF planes or an HDF5 dataset as OME-Zarr",
    )
    p.add_argument(
        "source", help="a .tif/.ome.tif, a folder or glob of 2D TIFF planes, or an .h5 file"
    )
    p.add_argument("out", help="the new OME-Zarr image (.zarr)")
    p.add_argument("--ngff", choices=["0.4", "0.5"], default="0.5")
    p.add_argument(
        "--chunks", type=ints, default=None, help="per output axis (t,c,z,y,x order, present ones)"
    )
    p.add_argument("--shards", type=ints, default=None, help="as --chunks; NGFF 0.5 only")
    p.add_argument("--levels", type=int, default=3, help="pyramid levels (default 3)")
    p.add_argument("--series", type=int, default=None, help="which image of a multi-image TIFF")
    p.add_argument("--dataset", default=None, help="HDF5 dataset path, e.g. t00000/s00/0/cells")
    p.add_argument(
        "--pattern", default=None, help='plane file names, e.g. "t{t}_c{c}_z{z}.tif" (integers)'
    )
    p.add_argument(
        "--axes",
        default=None,
        help="the source's axes in stored order where it does not say, e.g. zyx",
    )
    p.add_argument("--scale", default=None, help="physical pixel sizes, e.g. z=2,y=0.325,x=0.325")
    p.add_argument("--unit", default=None, help="unit of --scale's spatial sizes, e.g. micrometer")
    p.add_argument("--name", default=None, help="the image's name (default: the source's)")
    p.add_argument("--workers", type=int, default=None, help="local workers (default: cores)")
    p.add_argument("--scheduler", default=None, help="address of an existing dask scheduler")
    p.add_argument("--cluster", choices=["local", "slurm"], default=None, help="where workers run")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output")
    p.add_argument("--resume", action="store_true", help="continue an unfinished import of OUT")
    p.add_argument(
        "--no-checksum", action="store_true", help="skip the source's sha256 in the provenance"
    )
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    cluster_flags(p)
    p.set_defaults(cluster_overrides=cluster_overrides)

    p = sub.add_parser("export", help="write an ROI of an image (or of an output) as OME-TIFF")
    p.add_argument("image", help="the OME-Zarr image (.zarr)")
    p.add_argument("out", help="the OME-TIFF to write (.ome.tif)")
    what = p.add_mutually_exclusive_group()
    what.add_argument("--labels", default=None, help="export labels/NAME instead of the image")
    what.add_argument("--results", default=None, help="export results/NAME instead of the image")
    p.add_argument(
        "--roi", default=None, help="ROI name from the image, or z0:z1,y0:y1,x0:x1 (at --level)"
    )
    p.add_argument("--level", type=int, default=0, help="resolution level (default 0)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing OUT")
    p.add_argument("--json", action="store_true", help="machine-readable output")


def _cluster(args: argparse.Namespace) -> dict[str, Any] | None:
    overrides = args.cluster_overrides(args)
    if overrides.get("kind") != "slurm" and set(overrides) - {"kind"}:
        flags = ", ".join(f"--{k.replace('_', '-')}" for k in sorted(set(overrides) - {"kind"}))
        raise ConfigError(f"{flags}: SLURM options need --cluster slurm")
    if overrides.get("kind") == "slurm" and args.workers is not None:
        raise ConfigError("--workers is for --cluster local; SLURM imports use --jobs")
    return overrides or None


def cmd_import(args: argparse.Namespace) -> int:
    from engine.runs.importing import import_image

    if args.workers is not None and args.workers < 1:
        raise ConfigError(f"--workers must be at least 1, got {args.workers}")
    kwargs: dict[str, Any] = dict(
        ngff=args.ngff,
        chunks=args.chunks,
        shards=args.shards,
        levels=args.levels,
        series=args.series,
        dataset=args.dataset,
        pattern=args.pattern,
        axes=args.axes,
        scale=args.scale,
        unit=args.unit,
        name=args.name,
        workers=args.workers,
        scheduler=args.scheduler,
        cluster=_cluster(args),
        overwrite=args.overwrite,
        resume=args.resume,
        checksum=not args.no_checksum,
        announce=None if args.json or args.quiet else lambda t: console.print(t, highlight=False),
    )
    if args.quiet or args.json:
        result = import_image(args.source, args.out, **kwargs)
    else:
        with progress_bars(rate=False) as progress:
            started = progress_callback(progress)
            result = import_image(args.source, args.out, progress=started, **kwargs)
    if args.json:
        out.print_json(json.dumps(result.to_json()))
        return 0
    shape = "x".join(map(str, result.shape))
    peak = max(result.peak_worker_bytes.values(), default=0)
    out.print(
        f"imported {result.source} -> {result.output} ({result.axes} {shape} {result.dtype}, "
        f"{result.levels} levels, {result.tasks_done} chunk tasks"
        f"{', resumed' if result.resumed else ''}) in {result.seconds:.1f} s; worker peak "
        f"{peak / 2**20:.0f} MiB (projected {result.projected_worker_bytes / 2**20:.0f} MiB)",
        highlight=False,
        soft_wrap=True,
    )
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from engine.io.export import export

    result = export(
        args.image, args.out, args.roi, args.labels, args.results, args.level, args.overwrite
    )
    if args.json:
        out.print_json(
            json.dumps(
                {
                    "path": result.path,
                    "source": result.source,
                    "shape": list(result.shape),
                    "axes": result.axes,
                    "roi": {"start": list(result.roi.start), "stop": list(result.roi.stop)},
                }
            )
        )
        return 0
    sizes = ", ".join(f"{a} {s} {u or ''}".strip() for a, (s, u) in result.physical_size.items())
    out.print(
        f"wrote {result.path} ({result.axes} {'x'.join(map(str, result.shape))}; {sizes})",
        highlight=False,
        soft_wrap=True,
    )
    return 0


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "import": cmd_import,
    "export": cmd_export,
}
