"""How busy the workers were during a collection run: the thread-seconds they spent in
chunk tasks against the thread-seconds they had, from the scheduler's task stream
(dask's TaskStreamPlugin: one entry per finished task, with its worker and its
compute start and stop).

Why: a collection run is several single-image runs side by side on one cluster
(engine/runs/units.py); whether that keeps the workers busy between units (one unit's
stages waiting on each other, one unit planning while another computes) is what this
measures, rather than assumes.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the dataclass goes in results that commands import without dask
    from distributed import Client


@dataclass
class Occupancy:
    """`busy` thread-seconds of `threads` worker threads over `seconds` of wall time."""

    seconds: float = 0.0
    threads: int = 0
    busy: float = 0.0
    tasks: int = 0
    per_worker: dict[str, float] = field(default_factory=dict)  # busy seconds by address

    @property
    def idle_seconds(self) -> float:
        """Worker thread-seconds with no task running."""
        return max(0.0, self.seconds * self.threads - self.busy)

    @property
    def busy_fraction(self) -> float:
        have = self.seconds * self.threads
        return self.busy / have if have else 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "seconds": round(self.seconds, 3),
            "worker_threads": self.threads,
            "busy_thread_seconds": round(self.busy, 3),
            "idle_thread_seconds": round(self.idle_seconds, 3),
            "busy_fraction": round(self.busy_fraction, 3),
            "tasks": self.tasks,
        }


def _union(intervals: list[tuple[float, float]]) -> float:
    total, end = 0.0, float("-inf")
    for a, b in sorted(intervals):
        if b <= end:
            continue
        total += b - max(a, end)
        end = b
    return total


@contextmanager
def measured(client: Client, into: Occupancy | None) -> Iterator[None]:
    """Fill `into` with the workers' occupancy while the block runs (nothing if None)."""
    if into is None:
        yield
        return
    try:
        client.get_task_stream(start=time.time())  # registers the scheduler's plugin
    except Exception:  # noqa: BLE001 (a measurement must never stop a run)
        yield
        return
    started = time.time()
    try:  # the threads at the start, for the caller (set again at the end)
        into.threads = sum(int(w.get("nthreads", 1)) for w in _workers(client).values())
        yield
    finally:
        ended = time.time()
        try:
            stream = client.get_task_stream(start=started)
            workers = _workers(client)
        except Exception:  # noqa: BLE001
            stream, workers = [], {}
        by_worker: dict[str, list[tuple[float, float]]] = {}
        for entry in stream:
            for part in entry.get("startstops", ()):
                if part.get("action") == "compute":
                    a, b = max(part["start"], started), min(part["stop"], ended)
                    if b > a:
                        by_worker.setdefault(entry.get("worker", "?"), []).append((a, b))
        into.seconds = ended - started
        into.threads = sum(int(w.get("nthreads", 1)) for w in workers.values())
        into.tasks = len(stream)
        threads = {a: int(w.get("nthreads", 1)) for a, w in workers.items()}
        for worker, spans in by_worker.items():
            # one thread per worker: the union; more: the sum, capped at the threads
            busy = _union(spans) if threads.get(worker, 1) == 1 else sum(b - a for a, b in spans)
            into.per_worker[worker] = min(busy, into.seconds * threads.get(worker, 1))
        into.busy = sum(into.per_worker.values())


def _workers(client: Client) -> dict[str, Any]:
    try:
        return dict(client.scheduler_info().get("workers", {}))
    except Exception:  # noqa: BLE001 (a measurement must never stop a run)
        return {}
