"""Waiting for something to happen, with a deadline (never a fixed sleep that hopes it did).

A test that must show that something did *not* happen waits for an event that proves the
moment has passed (a later message answered, a worker reporting the task done, a control
connection cut), not for a length of time."""

from __future__ import annotations

import time


def wait_for(predicate, timeout: float = 30.0, interval: float = 0.05, message: str = "", *, detail=None):
    """``predicate()``'s first true value, polled until ``timeout`` seconds; AssertionError then
    (with ``detail()``, e.g. a worker's log, appended)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out waiting: {message}" + (f"\n{detail()}" if detail else ""))
        time.sleep(interval)


def wait_until(predicate, timeout: float, what: str, worker=None):
    """``wait_for`` with a worker's log in the failure (the ORU tests' spelling)."""
    return wait_for(predicate, timeout, 0.1, what, detail=worker.tail if worker else None)
