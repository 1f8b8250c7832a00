"""Requests in flight: a bounded thread pool whose work is acknowledged before STATE."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor, wait
from typing import Any


class InFlight:
    """Runs deliveries on at most `limit` threads, with a bounded backlog.

    `submit` returns at once while fewer than `limit` tasks run and fewer than
    `backlog` wait, so the target keeps reading its input and a worker that finishes
    takes the next batch without waiting for the reader: `limit` requests stay in
    flight continuously. Memory stays bounded by `limit + backlog` batches.
    `wait_all` returns when every submitted task has been acknowledged by Lago. The
    first failure of any task is raised by the next call to `submit`, `run_all` or
    `wait_all`, and no new work starts after it.
    """

    def __init__(
        self,
        limit: int,
        on_failure: Callable[[], None] | None = None,
        backlog: int | None = None,
    ) -> None:
        """Create the pool.

        Args:
            limit: Most tasks running at once (the `max_in_flight` setting).
            on_failure: Called once when a task fails (e.g. to stop other retries).
            backlog: Most tasks waiting for a worker (default: `limit`).
        """
        self._on_failure = on_failure
        self.limit = max(1, limit)
        self.backlog = self.limit if backlog is None else max(0, backlog)
        self._pool = ThreadPoolExecutor(max_workers=self.limit, thread_name_prefix="lago")
        # One slot per submitted task until it ends: submitting costs the same whatever
        # the number of tasks outstanding.
        self._slots = threading.Semaphore(self.limit + self.backlog)
        self._outstanding = 0
        self._settled = threading.Condition()
        self._failure: BaseException | None = None
        self._lock = threading.Lock()

    def _run(self, task: Callable[..., Any], *args: Any) -> None:
        """Run one task in a worker, unless an earlier one failed (then it never starts)."""
        if self._failure is not None:
            return
        try:
            task(*args)
        except BaseException as exc:
            with self._lock:
                first = self._failure is None
                if first:
                    self._failure = exc
            # At once, from the worker: tasks waiting in the backlog must not send.
            if first and self._on_failure is not None:
                self._on_failure()

    def _run_submitted(self, task: Callable[..., Any], *args: Any) -> None:
        try:
            self._run(task, *args)
        finally:
            self._slots.release()
            with self._settled:
                self._outstanding -= 1
                if not self._outstanding:
                    self._settled.notify_all()

    def _raise_failure(self) -> None:
        if self._failure is not None:
            raise self._failure

    def submit(self, task: Callable[..., Any], *args: Any) -> None:
        """Start a task in the background once the backlog has room.

        Args:
            task: Callable run in a worker thread.
            *args: Its arguments.
        """
        self._raise_failure()
        self._slots.acquire()
        if self._failure is not None:
            self._slots.release()
            raise self._failure
        with self._settled:
            self._outstanding += 1
        try:
            self._pool.submit(self._run_submitted, task, *args)
        except BaseException:
            self._slots.release()
            with self._settled:
                self._outstanding -= 1
                self._settled.notify_all()
            raise

    def run_all(self, task: Callable[[Any], Any], items: Iterable[Any]) -> None:
        """Run `task` on every item in parallel and return when all are done.

        Args:
            task: Callable taking one item.
            items: The items.
        """
        self._raise_failure()
        futures = [self._pool.submit(self._run, task, item) for item in items]
        wait(futures)
        self._raise_failure()

    def wait_all(self) -> None:
        """Wait until every submitted task has finished, then raise its first failure."""
        with self._settled:
            while self._outstanding:
                self._settled.wait()
        self._raise_failure()

    def close(self) -> None:
        """Stop the worker threads, dropping tasks that have not started."""
        self._pool.shutdown(wait=False, cancel_futures=True)

    def stop(self) -> None:
        """Drop the tasks that have not started and wait for the running ones to end.

        Their failures are not raised: the run is stopping for another reason.
        """
        self._pool.shutdown(wait=True, cancel_futures=True)
        with self._settled:  # the dropped tasks never end: nothing is outstanding now
            self._outstanding = 0
            self._settled.notify_all()
