"""Argument types the command's parsers share (engine/cli/parser.py, transfer.py)."""

from __future__ import annotations

import argparse


def ints(text: str) -> tuple[int, ...]:
    """`64,256,256` as integers; anything else is argparse's one-line usage error."""
    try:
        return tuple(int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"'{text}' is not a comma-separated list of integers"
        ) from None
