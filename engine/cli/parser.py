"""The command line's grammar: commands, flags and their help. Parsing only; the commands
are in engine/cli/commands.py."""

from __future__ import annotations

import argparse
from typing import Any

from engine.cli import transfer
from engine.cli.arguments import ints
from engine.core.version import __version__


def _names(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


ROI_HELP = (
    "ROI: a name from the config's rois: or from the image's ROI tables (tables/, listed "
    "by `info`), or z0:z1,y0:y1,x0:x1 in pixels (default: the whole image)"
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ngff-engine", description="ROI-scoped pipelines over OME-Zarr images on dask."
    )
    parser.add_argument("--version", action="version", version=f"ngff-engine {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("sample", help="write a synthetic 3D nuclei image with true labels")
    p.add_argument("out", help="path of the new .zarr")
    p.add_argument("--shape", type=ints, default=(128, 512, 512), help="Z,Y,X or Y,X")
    p.add_argument("--chunks", type=ints, default=None, help="chunk sizes, as --shape")
    p.add_argument("--ngff", choices=["0.4", "0.5"], default="0.5")
    p.add_argument("--seed", type=int, default=0)

    p = sub.add_parser("info", help="describe an OME-Zarr image and its outputs")
    p.add_argument("path", help="the image: a path or URL (http(s)://, s3://)")
    p.add_argument(
        "--output",
        default=None,
        help="output store (path or URL) for outputs and run state, when not the image",
    )
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("validate", help="check a pipeline config (and its image, if present)")
    p.add_argument(
        "--output",
        default=None,
        help="output store (path or URL) for outputs and run state, when not the image",
    )
    p.add_argument("config")
    p.add_argument("--input", default=None)

    for name, text in (("plan", "show the chunk tasks a run would do"), ("run", "run a pipeline")):
        p = sub.add_parser(name, help=text)
        p.add_argument("config")
        p.add_argument("--input", default=None, help="image path or URL (overrides the config)")
        p.add_argument(
            "--output",
            default=None,
            help="output store (path or URL) for outputs and run state, when not the image",
        )
        p.add_argument("--roi", default=None, help=ROI_HELP)
        p.add_argument("--json", action="store_true", help="machine-readable output")
        _warm_flags(p)
        _unit_flags(p)
    p.add_argument("--workers", type=int, default=None, help="local workers (default: cores)")
    p.add_argument("--scheduler", default=None, help="address of an existing dask scheduler")
    _output_mode(p)
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue the latest killed or failed run of these outputs, skipping done chunks",
    )
    p.add_argument(
        "--cluster",
        choices=["local", "slurm"],
        default=None,
        help="where workers run (default: the config's cluster.kind, else local)",
    )
    p.add_argument(
        "--dashboard",
        default=None,
        metavar="ADDRESS",
        help="where a local run's dask dashboard listens (default 127.0.0.1 on a free port; "
        "e.g. 0.0.0.0:8787 to reach it from other machines)",
    )
    p.add_argument(
        "--priority-roi",
        default=None,
        help="ROI (name or z0:z1,y0:y1,x0:x1) every stage computes first, to look at early "
        "(default: a config ROI with preview: true); on a plate, a well (B03), a field "
        "(B03/1), an image or an ROI of --roi-table: those units run first",
    )
    _cluster_flags(p)

    p = sub.add_parser("submit", help="submit a run as one SLURM batch job")
    p.add_argument("config")
    p.add_argument("--input", default=None, help="image path (overrides the config)")
    p.add_argument("--roi", default=None, help=ROI_HELP)
    _output_mode(p)
    p.add_argument("--dry-run", action="store_true", help="print the job script, submit nothing")
    p.add_argument("--wait", action="store_true", help="wait for the job; exit with its state")
    p.add_argument(
        "--resume",
        action="store_true",
        help="the job continues the latest killed or failed run of these outputs",
    )
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--template", default=None, help="sbatch template (default slurm/)")
    _unit_flags(p)
    _cluster_flags(p)

    p = sub.add_parser(
        "diff", help="compare two label images (e.g. versions): the evaluate scores, B as reference"
    )
    p.add_argument("path", help="the image (.zarr): a path or URL")
    p.add_argument(
        "--output",
        default=None,
        help="output store (path or URL) for outputs and run state, when not the image",
    )
    p.add_argument("a", help="label image to score, as in labels/A")
    p.add_argument("b", help="reference label image, as in labels/B")
    p.add_argument("--roi", default=None, help="z0:z1,y0:y1,x0:x1 in pixels (default: all)")
    p.add_argument("--workers", type=int, default=None, help="local workers (default: cores)")
    p.add_argument("--scheduler", default=None, help="address of an existing dask scheduler")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    _warm_flags(p)

    p = sub.add_parser("table", help="export a measurement table (tables/NAME) as CSV")
    p.add_argument("path", help="the image (.zarr)")
    p.add_argument("name", help="table name, as in tables/NAME")
    p.add_argument("--csv", required=True, help="CSV file to write ('-' for standard output)")

    p = sub.add_parser("preview", help="PNG of an ROI with label outlines, to look at")
    p.add_argument("path", help="the image (.zarr): a path or URL")
    p.add_argument(
        "--output",
        default=None,
        help="output store (path or URL) for outputs and run state, when not the image",
    )
    p.add_argument(
        "--roi", default=None, help="ROI name from the image, or z0:z1,y0:y1,x0:x1 (at --level)"
    )
    p.add_argument("--labels", default=None, help="label image to outline, as in labels/NAME")
    p.add_argument(
        "--reference",
        default=None,
        help="compare --labels with this label image (labels/NAME): true positives, false "
        "positives and false negatives at IoU 0.5, in three colours",
    )
    p.add_argument(
        "--scale",
        type=int,
        default=None,
        help="enlarge by this integer factor, nearest neighbour (default: long side >= 512 px)",
    )
    p.add_argument("--out", default="preview.png", help="PNG to write (default preview.png)")
    p.add_argument("--level", type=int, default=0, help="resolution level (default 0)")
    view = p.add_mutually_exclusive_group()
    view.add_argument("--plane", type=int, default=None, help="one z plane (index at --level)")
    view.add_argument(
        "--max",
        action="store_true",
        help="maximum projection over z (default, unless label outlines would overlap in it: "
        "then the plane through the ROI's centre)",
    )
    _warm_flags(p)

    p = sub.add_parser(
        "status",
        help="the warm engine; runs of an image (.zarr); or state and progress of a batch run",
    )
    p.add_argument(
        "run",
        nargs="?",
        default=None,
        help="an image (.zarr): its runs; or a batch run folder or SLURM job id "
        "(none: the warm engine)",
    )
    p.add_argument("--shared-dir", default=None, help="where runs are (default ~/.ngff-engine)")
    p.add_argument("--wells", type=_names, default=None, help="wells of a plate: B03,C05")
    p.add_argument("--fields", type=_names, default=None, help="fields of each well: 0,1")
    p.add_argument("--json", action="store_true", help="machine-readable output")

    p = sub.add_parser("stop", help="stop the warm engine (local scheduler and workers)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    transfer.add_parsers(sub, _cluster_flags, cluster_overrides)
    return parser


def _unit_flags(p: argparse.ArgumentParser) -> None:
    """The units of a collection run: a plate's wells and fields, an ROI table's ROIs."""
    p.add_argument(
        "--roi-table",
        default=None,
        help="run once per ROI of this ROI table of each image (e.g. FOV_ROI_table)",
    )
    p.add_argument(
        "--roi-overlap",
        choices=["refuse", "first", "last"],
        default="refuse",
        help="which ROI of --roi-table wins where ROIs overlap (default: refuse overlaps)",
    )
    p.add_argument("--wells", type=_names, default=None, help="wells of a plate input: B03,C05")
    p.add_argument("--fields", type=_names, default=None, help="fields of each well: 0,1")


def _warm_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--no-warm",
        action="store_true",
        help="start a local cluster for this command only, not the warm engine "
        "(also NGFF_ENGINE_WARM=0)",
    )
    p.add_argument(
        "--idle-timeout",
        type=float,
        default=None,
        help="seconds without work before the warm engine stops (default 600; also "
        "NGFF_ENGINE_IDLE_TIMEOUT)",
    )


def _output_mode(p: argparse.ArgumentParser) -> None:
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    mode.add_argument("--update", action="store_true", help="write this ROI into existing outputs")


# CLI flag -> ClusterSpec field; they override the config's `cluster:` section.
CLUSTER_FLAGS = {
    "partition": "partition",
    "account": "account",
    "jobs": "jobs",
    "min_jobs": "min_jobs",
    "max_jobs": "max_jobs",
    "cores": "cores",
    "processes": "processes",
    "memory": "memory",
    "walltime": "walltime",
    "lifetime": "lifetime",
    "log_dir": "log_directory",
    "shared_dir": "shared_directory",
    "template": "template",
}


def _cluster_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("SLURM (override the config's cluster: section)")
    g.add_argument("--partition", "--queue", dest="partition", default=None, help="partition")
    g.add_argument("--account", default=None, help="account to charge (-A)")
    g.add_argument("--jobs", type=int, default=None, help="worker jobs (fixed size)")
    g.add_argument("--min-jobs", type=int, default=None, help="adaptive: fewest worker jobs")
    g.add_argument("--max-jobs", type=int, default=None, help="adaptive: most worker jobs")
    g.add_argument("--cores", type=int, default=None, help="CPUs per worker job")
    g.add_argument("--processes", type=int, default=None, help="dask workers per job")
    g.add_argument("--memory", default=None, help="memory per worker job, e.g. 4GiB")
    g.add_argument("--walltime", default=None, help="time limit per job, e.g. 01:00:00")
    g.add_argument(
        "--lifetime",
        default=None,
        help="adaptive: a worker retires after this and a new job replaces it, e.g. 55m "
        "(default: the walltime less a margin)",
    )
    g.add_argument("--log-dir", default=None, help="SLURM log folder")
    g.add_argument(
        "--shared-dir", default=None, help="folder the compute nodes see (default ~/.ngff-engine)"
    )
    g.add_argument(
        "--no-tls",
        action="store_true",
        help="plain TCP between scheduler and workers, local or SLURM (unsafe)",
    )


def cluster_overrides(args: argparse.Namespace) -> dict[str, Any]:
    overrides = {
        field: getattr(args, flag)
        for flag, field in CLUSTER_FLAGS.items()
        if getattr(args, flag, None) is not None
    }
    if getattr(args, "no_tls", False):
        overrides["tls"] = False
    if getattr(args, "dashboard", None):
        overrides["dashboard"] = args.dashboard
    if getattr(args, "cluster", None):
        overrides["kind"] = args.cluster
    return overrides


LOCAL_OVERRIDES = {"kind", "tls", "dashboard"}  # cluster overrides a local run takes
