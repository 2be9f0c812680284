"""The warm engine from the command line (engine/execute/warm.py): `ngff-engine stop`,
`ngff-engine status` without an argument, and the start that `plan` and `preview` give
it in the background so that the run after them finds it ready."""

from __future__ import annotations

import argparse
import json

from engine.cli.render import out
from engine.execute import warm


def wanted(args: argparse.Namespace) -> bool:
    """Whether this command may use the warm engine (no --no-warm, NGFF_ENGINE_WARM)."""
    return not getattr(args, "no_warm", False) and warm.enabled()


def warm_flag(args: argparse.Namespace) -> bool | None:
    """`warm` for run() and diff(): False with --no-warm, else the default."""
    return False if getattr(args, "no_warm", False) else None


def start_in_background(args: argparse.Namespace) -> None:
    """Start the warm engine without waiting for it (plan, preview: the run that follows
    finds it up). Nothing when it runs already, or is not wanted."""
    if wanted(args):
        warm.ensure(idle_timeout=getattr(args, "idle_timeout", None), wait=False)


def cmd_stop(args: argparse.Namespace) -> int:
    stopped = warm.stop()
    if args.json:
        out.print_json(json.dumps({"stopped": stopped is not None}))
        return 0
    if stopped is None:
        out.print("no warm engine runs", highlight=False)
    else:
        out.print(f"stopped the warm engine at {stopped.address} (pid {stopped.pid})",
                  highlight=False)  # fmt: skip
    return 0


def engine_status(args: argparse.Namespace) -> int:
    """`ngff-engine status` without an argument: the warm engine."""
    found = warm.describe()
    if args.json:
        out.print_json(json.dumps({"engine": found}))
        return 0
    if found is None:
        out.print("no warm engine runs (the next local run starts one)", highlight=False)
        return 0
    if found.get("busy"):
        activity = f"in use by {found.get('clients', 0)} client(s) since {found.get('since')}"
    else:
        activity = f"idle since {found.get('since', found['started'])}"
    timeout = found.get("idle_timeout")
    stops = f"; stops after {timeout:g} s idle" if timeout else ""
    out.print(
        f"warm engine at {found['address']} (pid {found['pid']}), {found['workers']} workers, "
        f"started {found['started']}; {activity}{stops}",
        highlight=False,
        soft_wrap=True,
    )
    out.print(f"  folder: {found['folder']}", highlight=False, soft_wrap=True)
    return 0
