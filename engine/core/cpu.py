"""Where a worker's CPU time goes, per batch of chunk tasks: a stopwatch with one running
part at a time (compute, decode, encode, io, scheduling).

Each switch reads the process's CPU clock once and charges the time since the last
switch to the part that was running, so a chunk task costs six clock reads (reading
its input, writing its output, its done marker: in and out of each). Measured on this
machine (a VM, where the CPU clock is a system call): 0.9 us of CPU per read, 5.0 to
5.4 us of CPU per chunk for the six switches; a chunk task takes milliseconds.

Process CPU, not thread CPU, on worker processes: they run one task thread each, and
zarr decodes and encodes in its own thread pool when a chunk is not read or written
through its file (sharded or remote arrays); the thread clock would miss that time.
On a worker with several task threads the parts of concurrent batches overlap. The task
threads of a run in the command's own process count their thread's CPU (`start`).
Each thread keeps its own stopwatch.

Standard library only: the io layer (engine/io/arrays.py) and the workers
(engine/worker/chain.py, engine/execute/executor.py) switch parts, the driver adds its
own scheduling time per stage.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

PARTS = ("compute", "decode", "encode", "io", "scheduling")
COMPUTE, DECODE, ENCODE, IO, SCHEDULING = range(len(PARTS))


class _Stopwatch:
    """One task thread's parts: the running part, since when, and the time per part."""

    __slots__ = ("clock", "running", "since", "spent")

    def __init__(self, clock=time.process_time) -> None:  # noqa: B008
        self.clock = clock
        self.spent = [0.0] * len(PARTS)
        self.running = SCHEDULING
        self.since = clock()


_local = threading.local()


def _stopwatch() -> _Stopwatch:
    try:
        return _local.stopwatch
    except AttributeError:
        _local.stopwatch = _Stopwatch()
        return _local.stopwatch


def switch(part: int) -> int:
    """Charge the CPU time since the last switch to the running part; `part` runs now.
    Returns the part that was running, to switch back to."""
    watch = _stopwatch()
    now = watch.clock()
    before = watch.running
    watch.spent[before] += now - watch.since
    watch.running, watch.since = part, now
    return before


def start(shared_process: bool = False) -> None:
    """Start counting afresh (a batch begins), in the scheduling part. `shared_process`:
    the task threads of the run's own process (engine/execute/pools.py) count their own
    thread's CPU, not the process's, which they share."""
    _local.stopwatch = _Stopwatch(time.thread_time if shared_process else time.process_time)


def stop() -> tuple[float, ...]:
    """The CPU seconds per part since `start` (the running part charged up to now)."""
    switch(SCHEDULING)
    return tuple(_stopwatch().spent)


@contextmanager
def charged(part: int) -> Iterator[None]:
    """Charge what runs inside to `part`, then go back to the part that ran before."""
    before = switch(part)
    try:
        yield
    finally:
        switch(before)


def as_dict(seconds: tuple[float, ...] | list[float]) -> dict[str, float]:
    return {name: round(max(0.0, s), 4) for name, s in zip(PARTS, seconds, strict=True)}


class DriverClock:
    """The driver's CPU time (its thread's) per stage, each moment charged to the one
    stage it works for: nested charges pause the outer one (a reduction's finish waits
    for its batches and meanwhile submits and collects those of other stages)."""

    def __init__(self) -> None:
        self.spent: dict[str, float] = {}
        self.stack: list[str] = []
        self.since = 0.0

    def _charge(self) -> float:
        now = time.thread_time()
        if self.stack:
            name = self.stack[-1]
            self.spent[name] = self.spent.get(name, 0.0) + now - self.since
        self.since = now
        return now

    @contextlib.contextmanager
    def charged(self, name: str) -> Iterator[None]:
        self._charge()
        self.stack.append(name)
        try:
            yield
        finally:
            self._charge()
            self.stack.pop()
