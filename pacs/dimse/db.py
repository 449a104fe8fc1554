"""Database work of the DIMSE handlers, on a few long-lived threads.

The acceptor runs every association on a new thread, and a Django connection belongs to its
thread: without this, each association would open (and close) its own PostgreSQL
connection, about 3-6 ms on this machine, more than the MWL query itself.  ``run(fn, ...)``
hands ``fn`` to one of DICOM_DB_CONNECTIONS worker threads, each keeping its connection
(subject to CONN_MAX_AGE and CONN_HEALTH_CHECKS), and returns its result or raises its
exception in the caller's thread.  ``stop()`` closes the connections (server shutdown).
"""

from __future__ import annotations

import queue
import threading
from concurrent.futures import Future

from django.conf import settings
from django.db import close_old_connections, connections

_lock = threading.Lock()
_workers: _Workers | None = None


class _Workers:
    def __init__(self, size: int):
        self.queue: queue.SimpleQueue = queue.SimpleQueue()
        self.threads = [threading.Thread(target=self._loop, name=f"dicom-db-{n}", daemon=True) for n in range(size)]
        for thread in self.threads:
            thread.start()

    def _loop(self) -> None:
        while True:
            task = self.queue.get()
            if task is None:
                connections.close_all()
                return
            fn, args, kwargs, future = task
            if not future.set_running_or_notify_cancel():
                continue
            try:
                close_old_connections()  # CONN_MAX_AGE, and a connection left broken by an error
                future.set_result(fn(*args, **kwargs))
            except BaseException as exc:  # noqa: BLE001 - handed to the caller
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


def run(fn, *args, **kwargs):
    """Run ``fn(*args, **kwargs)`` on a database worker thread; its result or its exception."""
    global _workers
    workers = _workers
    if workers is None:
        with _lock:
            if _workers is None:
                _workers = _Workers(settings.DICOM_DB_CONNECTIONS)
            workers = _workers
    return workers.submit(fn, args, kwargs).result()


def stop() -> None:
    """Stop the worker threads and close their connections."""
    global _workers
    with _lock:
        workers, _workers = _workers, None
    if workers is not None:
        workers.stop()
