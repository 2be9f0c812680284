"""Where the executor's batches run: a `TaskPool`, the few operations the executor needs
of dask.distributed's client (submit after other tasks, with a priority; wait for the
next one done; run a function on every worker), so that a run too small to pay for a
cluster runs on a `ThreadPool` of the command's own process, without dask.

Measured on 64x256x256 (gaussian -> Otsu -> label, 0.3 s of compute), three runs each
in turn on a loaded machine: the whole command used 1.2 to 1.4 s of user CPU on this
pool against 1.5 to 1.8 s on an in-process dask cluster (importing distributed: 0.23 s
after numpy, zarr and scipy, quiet; starting its scheduler and worker: 0.7 to 1.0 s of
wall time, mostly waiting). scipy.ndimage, numpy and the codecs
release the GIL for most of their work: two threads ran 1.3x to 1.5x the work of one on
gaussian, label and histogram blocks of 64x256x256.
"""

from __future__ import annotations

import heapq
import itertools
import os
import queue
import resource
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future
from contextlib import contextmanager
from typing import Any, Protocol

IN_PROCESS = "in-process"  # the one worker of a ThreadPool, as runs report workers


class Completions(Protocol):
    def add(self, task: Any) -> None: ...

    def __next__(self) -> Any: ...


class TaskPool(Protocol):
    """What the executor (engine/execute/executor.py) submits its batches to."""

    slots: int  # tasks that run at once
    dashboard_link: str | None
    shares_process: bool  # tasks run in this process (its CPU clock counts them all)

    def submit(
        self,
        function: Callable[..., Any],
        *args: Any,
        after: Sequence[Any] = (),
        priority: int = 0,
        resources: dict[str, float] | None = None,
    ) -> Any:
        """A task handle (`.result()`, `.cancel()`): `function(*args)` once every task in
        `after` is done; among ready tasks the highest priority first."""
        ...

    def completions(self) -> Completions:
        """Tasks added to it, handed back as each is done (`next`)."""
        ...

    def on_each_worker(self, function: Callable[[], Any]) -> dict[str, Any]: ...

    def call(self, function: Callable[..., Any], *args: Any) -> Any:
        """`function(*args)` on a worker, waited for."""
        ...

    def memory(self) -> tuple[int, int]:
        """The smallest worker memory limit (0: none) and the most threads on one worker."""
        ...

    def resources(self) -> list[dict[str, float]]:
        """What each worker offers (GPUs, ...)."""
        ...


class _Completions:
    def __init__(self) -> None:
        self._done: queue.SimpleQueue[Future] = queue.SimpleQueue()

    def add(self, task: Future) -> None:
        task.add_done_callback(self._done.put)

    def __next__(self) -> Future:
        return self._done.get()


class ThreadPool:
    """`threads` task threads in this process, ready tasks by priority (then in the
    order submitted). A task waiting for others is held here until they are done, so no
    thread ever blocks on another task; when one it waits for failed, it fails with that
    error without running. Threads are daemons: a run stopped by Ctrl-C or SIGTERM does
    not wait for the batch in hand (its chunks are written whole or not at all, and its
    done markers say which)."""

    dashboard_link = None
    shares_process = True

    def __init__(self, threads: int) -> None:
        self.slots = max(1, threads)
        self._ready: list[tuple[int, int, Future, Callable[..., Any], tuple]] = []
        self._order = itertools.count()
        self._lock = threading.Condition()
        self._closed = False
        self._threads = [
            threading.Thread(target=self._work, name=f"ngff-engine-task-{i}", daemon=True)
            for i in range(self.slots)
        ]
        for thread in self._threads:
            thread.start()

    def submit(
        self,
        function: Callable[..., Any],
        *args: Any,
        after: Sequence[Future] = (),
        priority: int = 0,
        resources: dict[str, float] | None = None,
    ) -> Future:
        task: Future = Future()
        waiting = [f for f in after if not f.done()]
        failed = next((f for f in after if f.done() and _failed(f)), None)
        if failed is not None:
            task.set_exception(failed.exception())
            return task
        if not waiting:
            self._queue(priority, task, function, args)
            return task
        count = [len(waiting)]
        count_lock = threading.Lock()

        def one_done(dependency: Future) -> None:
            if dependency.cancelled():
                task.cancel()
                return
            if _failed(dependency):
                if task.set_running_or_notify_cancel():
                    task.set_exception(dependency.exception())
                return
            with count_lock:
                count[0] -= 1
                last = count[0] == 0
            if last and not task.done():
                self._queue(priority, task, function, args)

        for dependency in waiting:
            dependency.add_done_callback(one_done)
        return task

    def _queue(self, priority: int, task: Future, function: Callable[..., Any], args: tuple):
        with self._lock:
            heapq.heappush(self._ready, (-priority, next(self._order), task, function, args))
            self._lock.notify()

    def _work(self) -> None:
        while True:
            with self._lock:
                while not self._ready and not self._closed:
                    self._lock.wait()
                if self._closed:
                    return
                _, _, task, function, args = heapq.heappop(self._ready)
            if not task.set_running_or_notify_cancel():
                continue  # cancelled while it waited
            try:
                result = function(*args)
            except BaseException as exc:  # handed to whoever waits for the task
                task.set_exception(exc)
            else:
                task.set_result(result)

    def completions(self) -> _Completions:
        return _Completions()

    def on_each_worker(self, function: Callable[[], Any]) -> dict[str, Any]:
        return {IN_PROCESS: function()}

    def call(self, function: Callable[..., Any], *args: Any) -> Any:
        return function(*args)

    def memory(self) -> tuple[int, int]:
        return memory_limit(), self.slots

    def resources(self) -> list[dict[str, float]]:
        return []

    def close(self) -> None:
        with self._lock:
            self._closed = True
            for _, _, task, _, _ in self._ready:
                task.cancel()
            self._ready.clear()
            self._lock.notify_all()


def _failed(task: Future) -> bool:
    return not task.cancelled() and task.exception() is not None


@contextmanager
def thread_pool(threads: int) -> Iterator[ThreadPool]:
    pool = ThreadPool(threads)
    try:
        yield pool
    finally:
        pool.close()


def memory_limit() -> int:
    """This process's memory: the machine's, or less when a cgroup (a container, a SLURM
    job) or an address-space limit says so, as dask's worker reckons its limit."""
    limits = [os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")]
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            text = open(path).read().strip()
        except OSError:
            continue
        if text.isdigit():
            limits.append(int(text))
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    if soft > 0:
        limits.append(soft)
    return min(limits)
