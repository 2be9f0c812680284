"""Modules imported in a background thread while a run does other things.

The driver combines some stages' results itself: Otsu's threshold from the combined
histogram (scikit-image), the label merge's components (scipy.sparse), the tables
(anndata, pandas). The ops load scipy and scikit-image on first use (tasks/__init__.py),
so without this the driver imported them at the barrier where every worker waits for
it (py-spy, time series workload: a third of the driver's samples at the Otsu barrier
and the merge were imports). Started when the run starts, they load while the cluster
starts, which is mostly waiting."""

from __future__ import annotations

import importlib
import threading
from collections.abc import Iterable


def import_in_background(modules: Iterable[str]) -> threading.Thread:
    """Import `modules`, in order, in a daemon thread; an import that fails is left for
    the code that needs the module to report."""
    names = list(modules)

    def load() -> None:
        for name in names:
            try:
                importlib.import_module(name)
            except Exception:  # noqa: BLE001, S112 (reported where the module is used)
                continue

    thread = threading.Thread(target=load, name="preload", daemon=True)
    thread.start()
    return thread
