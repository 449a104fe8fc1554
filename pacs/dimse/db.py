"""Database work of the DIMSE handlers, on a few long-lived threads.

The acceptor runs every association on a new thread, and a Django connection belongs to its
thread: without this, each association would open (and close) its own PostgreSQL
connection, which costs more than the MWL query itself.  ``run(fn, ...)`` hands ``fn`` to
one of DICOM_DB_CONNECTIONS worker threads, each keeping its connection (subject to
CONN_MAX_AGE and CONN_HEALTH_CHECKS), and returns its result or raises its exception in the
caller's thread.  ``stop()`` closes the connections (server shutdown).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from concurrent.futures import Future, wait

from django.conf import settings
from django.db import close_old_connections, connections

log = logging.getLogger("pacs.dimse.db")
_lock = threading.Lock()
_later: set = set()  # futures of run_later not yet done
_deferred: dict = {}  # run_soon: fn -> its timer, until it is queued
CHECK_EVERY_SECONDS = 1.0
_workers: _Workers | None = None


class _Workers:
    def __init__(self, size: int):
        self.queue: queue.SimpleQueue = queue.SimpleQueue()
        self.threads = [threading.Thread(target=self._loop, name=f"dicom-db-{n}", daemon=True) for n in range(size)]
        for thread in self.threads:
            thread.start()

    def _loop(self) -> None:
        checked = 0.0
        failed = False
        while True:
            task = self.queue.get()
            if task is None:
                connections.close_all()
                return
            fn, args, kwargs, future = task
            if not future.set_running_or_notify_cancel():
                continue
            try:
                # CONN_MAX_AGE, CONN_HEALTH_CHECKS (a SELECT 1 round trip) and a connection left
                # broken by an error: looked at after a failure, else at most once a second.
                now = time.monotonic()
                if failed or now - checked >= CHECK_EVERY_SECONDS:
                    close_old_connections()
                    checked, failed = now, False
                future.set_result(fn(*args, **kwargs))
            except BaseException as exc:  # noqa: BLE001 - handed to the caller
                failed = True
                future.set_exception(exc)

    def submit(self, fn, args, kwargs) -> Future:
        future: Future = Future()
        self.queue.put((fn, args, kwargs, future))
        return future

    def stop(self) -> None:
        for _ in self.threads:
            self.queue.put(None)
        for thread in self.threads:
            thread.join(timeout=10)


def _pool() -> _Workers:
    global _workers
    workers = _workers
    if workers is None:
        with _lock:
            if _workers is None:
                _workers = _Workers(settings.DICOM_DB_CONNECTIONS)
            workers = _workers
    return workers


def run(fn, *args, **kwargs):
    """Run ``fn(*args, **kwargs)`` on a database worker thread; its result or its exception."""
    return _pool().submit(fn, args, kwargs).result()


def run_later(fn, *args, **kwargs) -> Future:
    """Queue ``fn(*args, **kwargs)`` on a database worker thread without waiting (records that
    must not delay a DICOM answer: counters, the journey's MWL record).  An exception is
    logged.  ``stop()`` runs what is queued before it closes the connections."""

    def _log_failure(future: Future) -> None:
        exc = future.exception()
        if exc is not None:
            log.warning("background database work failed", extra={"task": getattr(fn, "__name__", str(fn)),
                                                                   "error": str(exc)[:200]})

    future = _pool().submit(fn, args, kwargs)
    with _lock:
        _later.add(future)
    future.add_done_callback(_log_failure)
    future.add_done_callback(_later.discard)
    return future


def run_soon(fn, delay: float) -> None:
    """Queue ``fn()`` on a database worker thread ``delay`` seconds from now, once however
    often it is asked for meanwhile: work that gathers (counters) is then written a few times a
    second at most instead of once per answer.  ``flush()`` and ``stop()`` queue it at once."""
    with _lock:
        if fn in _deferred:
            return
        timer = threading.Timer(delay, _queue_deferred, (fn,))
        timer.daemon = True
        _deferred[fn] = timer
    timer.start()


def _queue_deferred(fn) -> None:
    with _lock:
        timer = _deferred.pop(fn, None)
    if timer is None:
        return  # queued meanwhile by flush()
    timer.cancel()
    try:
        run_later(fn)
    except Exception as exc:  # noqa: BLE001 - on a timer thread: logged, as run_later's failures are
        log.warning("background database work not queued", extra={"task": getattr(fn, "__name__", str(fn)),
                                                                   "error": str(exc)[:200]})


def flush(timeout: float = 10.0) -> None:
    """Queue what ``run_soon`` holds, then wait until the work queued by ``run_later`` so far is
    done (tests, shutdown)."""
    with _lock:
        deferred = list(_deferred)
    for fn in deferred:
        _queue_deferred(fn)
    with _lock:
        pending = list(_later)
    wait(pending, timeout=timeout)


def stop() -> None:
    """Stop the worker threads (after the work queued, ``run_soon``'s included) and close their
    connections."""
    global _workers
    with _lock:
        deferred = list(_deferred) if _workers is not None else []
    for fn in deferred:
        _queue_deferred(fn)
    with _lock:
        workers, _workers = _workers, None
    if workers is not None:
        workers.stop()
