"""Threads: the thread counts of the numerical libraries inside a block of code, and a
background writer that runs write jobs in order on one thread while the caller computes
the next block."""

from __future__ import annotations

import contextlib
import queue
import threading
from collections.abc import Callable, Iterator
from typing import Any


def _forked_worker(torch_threads: int) -> None:
    """A forked worker's torch on ``torch_threads`` threads (set before its first op, so a
    worker never enters the parent's OpenMP pool)."""
    import sys

    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(int(torch_threads))


def cpu_seconds() -> float:
    """CPU seconds of this process and of its finished (joined) child processes."""
    import os
    import time

    times = os.times()
    return time.process_time() + times.children_user + times.children_system


@contextlib.contextmanager
def forked_pool(workers: int, torch_threads: int = 1) -> Iterator[Any]:
    """A ``multiprocessing`` pool of ``workers`` forked processes, each on
    ``torch_threads`` torch threads. Forked, not spawned: the workers share what the
    parent loaded (copy-on-write) and do not re-run a workflow script, which has no
    ``__main__`` guard. For CPU work only (CUDA does not survive a fork). Every worker is
    stopped and joined when the block ends, also on an error or an interrupt."""
    import multiprocessing

    pool = multiprocessing.get_context("fork").Pool(int(workers), _forked_worker, (int(torch_threads),))
    try:
        yield pool
        pool.close()
    except BaseException:
        pool.terminate()
        raise
    finally:
        pool.join()


#: the function forked workers of :func:`forked_map` call (set in the parent just before
#: the fork: the workers inherit it, closures and loaded data included; nothing of it is pickled)
_FORKED: dict[str, Callable[[Any], Any]] = {}


def _forked_call(item: tuple[int, Any]) -> tuple[int, Any]:
    index, value = item
    return index, _FORKED["function"](value)


def forked_map(function: Callable[[Any], Any], items: list, workers: int, torch_threads: int = 1) -> Iterator[tuple[int, Any]]:
    """``(index, function(items[index]))`` for every item, in the order they finish, from
    ``workers`` forked processes (:func:`forked_pool`). ``function`` may be a closure over
    what the parent loaded: the workers inherit it; only items and results are pickled."""
    _FORKED["function"] = function
    try:
        with forked_pool(workers, torch_threads) as pool:
            yield from pool.imap_unordered(_forked_call, list(enumerate(items)))
    finally:
        _FORKED.clear()


@contextlib.contextmanager
def torch_threads(n_threads: int) -> Iterator[None]:
    """Run torch CPU ops on ``n_threads`` threads inside the block."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(n_threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


#: seconds between two looks at the writer's error while the caller waits for a free slot
_POLL_S = 0.05


class BackgroundWriter:
    """Runs the jobs given to :meth:`submit` one after the other, in order, on one thread.

    At most ``depth`` jobs wait besides the one running, so the caller can compute the
    next block while this one is written, and memory holds a bounded number of blocks.
    A job's exception is raised again in the caller: at its next ``submit`` or when the
    ``with`` block ends (the jobs after it are skipped). When the ``with`` block ends with
    an exception (an error, KeyboardInterrupt, or SIGTERM turned into SystemExit), the
    jobs still waiting are dropped and the thread is joined after the one it is running:
    nothing writes into a temporary that the caller is about to delete. Use as a context
    manager.
    """

    def __init__(self, depth: int = 1, name: str = "rsdyn-writer"):
        self._jobs: queue.Queue = queue.Queue(maxsize=max(1, depth))
        self._error: BaseException | None = None
        self._cancelled = threading.Event()
        self._thread = threading.Thread(target=self._work, name=name, daemon=True)

    def _work(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            if self._error is not None or self._cancelled.is_set():
                continue  # drain: a failed or cancelled writer runs nothing more
            function, args, kwargs = job
            try:
                function(*args, **kwargs)
            except BaseException as err:  # noqa: BLE001 - handed to the caller's thread
                self._error = err

    def _put(self, item: Any, check: bool) -> None:
        """Queue ``item``; while the queue is full, wake up often (a signal in the caller's
        thread is handled at once) and, with ``check``, raise a job's error."""
        while True:
            if check:
                self.raise_error()
            try:
                self._jobs.put(item, timeout=_POLL_S)
                return
            except queue.Full:
                continue

    def raise_error(self) -> None:
        """Raise the exception of a failed job, if any, in the calling thread."""
        if self._error is not None:
            raise self._error

    def submit(self, function: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        """Run ``function(*args, **kwargs)`` on the writer thread after the jobs before it;
        blocks while ``depth`` jobs are waiting."""
        if not self._thread.is_alive():
            raise RuntimeError("BackgroundWriter.submit outside its with block.")
        self._put((function, args, kwargs), check=True)

    def __enter__(self) -> BackgroundWriter:
        self._thread.start()
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self._cancelled.set()
        self._put(None, check=False)
        while self._thread.is_alive():
            self._thread.join(_POLL_S)
        if exc_type is None:
            self.raise_error()
