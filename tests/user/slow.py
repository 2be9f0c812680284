"""A slow user function for tests that must catch a run in the middle (signals, TLS,
overwrite): workers import it by name, so it stays importable from tests/."""

from __future__ import annotations

import os
import time

import numpy as np

SECONDS = float(os.environ.get("NGFF_TEST_SLOW_SECONDS", "0"))  # 0: no pause


def slow(block: np.ndarray) -> np.ndarray:
    """The block as float32 (plus one, so it differs from the input), after a pause."""
    time.sleep(SECONDS)
    return block.astype(np.float32) + 1


def slower(block: np.ndarray) -> np.ndarray:
    """As `slow`, plus two: another config, another output content."""
    time.sleep(SECONDS)
    return block.astype(np.float32) + 2
